"""The dispatcher: every worker's events checked, numbered, fed to the rules and stored in
the outbox, with their composites; the wiring in ``agent/daemon.py`` builds one per agent."""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from agent.events.schema import CompositeEvent, Event
from agent.events.validate import metadata_problems
from agent.media.store import MediaStore
from agent.mqtt.link import Topics
from agent.outbox.store import Outbox, OutboxError, OutboxMessage
from agent.outbox.summary import RepeatSummary

logger = logging.getLogger(__name__)


def event_messages(event: Event, media_transport: str) -> list[OutboxMessage]:
    """The outbox messages for one event: the JSON, and its media when they travel apart.

    ``inline``: one message, media as base64 inside. ``topic``: media go first, each on its
    own topic, so that a consumer that sees the event can already fetch its images.
    ``request``: one message with the media's metadata only; the bytes stay in the media
    store until someone asks (``set/media/get``).
    """
    stream = event.source.id
    topic = Topics.events(stream)
    if media_transport == "request":
        return [OutboxMessage(topic, event.without_media().to_json(), stream)]
    if media_transport != "topic" or not (event.images or (event.audio and event.audio.data)):
        return [OutboxMessage(topic, event.to_json(), stream)]
    messages: list[OutboxMessage] = []

    def split(media: Any) -> Any:
        if media is None or media.data is None:
            return media
        media_topic = Topics.media(stream, event.id, media.role)
        messages.append(
            OutboxMessage(media_topic, base64.b64decode(media.data), stream, kind="media")
        )
        return media.model_copy(update={"data": None, "topic": media_topic})

    images = [split(m) for m in event.images]
    audio = split(event.audio)
    slim = event.model_copy(update={"images": images, "audio": audio})
    messages.append(OutboxMessage(topic, slim.to_json(), stream))
    return messages


def composite_message(composite: CompositeEvent) -> OutboxMessage:
    """The outbox message of a composite event (same stream per rule keeps updates in order)."""
    return OutboxMessage(
        Topics.composite(composite.rule.id), composite.to_json(), f"rule:{composite.rule.id}",
        kind="composite",
    )


class Dispatcher:
    """Takes events from every worker: check, persist, feed the rules, wake delivery.

    Thread-safe: workers call ``emit`` from their own threads.
    """

    def __init__(self, config: AgentConfig, outbox: Outbox, wake: Callable[[], None],
                 engine: Any | None = None, media: MediaStore | None = None,
                 on_media: Callable[[Event], None] | None = None) -> None:
        self._config = config
        self._outbox = outbox
        self.media = media
        self._on_media = on_media
        # Fixed for the process: a reload that changes it asks for a restart (mqtt section).
        self._transport = config.mqtt.media_transport
        self._wake = wake
        self.engine = engine
        self.engine_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self.composites = 0
        # Every accepted event gets (run_id, seq): consumers and the fault tests can tell a
        # gap (a loss) from a duplicate. seq restarts at 0 with each run of the agent.
        self.run_id = uuid.uuid4().hex[:12]
        self._seq: Counter[str] = Counter()
        self._store_errors = RepeatSummary(logger, "events not stored (outbox_error)",
                                           time.monotonic, level=logging.ERROR)

    def set_config(self, config: AgentConfig) -> None:
        self._config = config

    def _count(self, reason: str) -> None:
        with self._count_lock:
            self.rejected[reason] += 1

    def emit(self, event: Event) -> None:
        """Accept one base event from a worker."""
        problems = metadata_problems(event, self._config.use_cases)
        if problems:
            self._count("invalid_metadata")
            logger.warning("event %s from %s rejected (use case %s): %s", event.id,
                           event.source.id, event.use_case, "; ".join(problems))
            return
        with self._count_lock:
            seq = self._seq[event.source.id]
            self._seq[event.source.id] += 1
        event = event.model_copy(update={"run_id": self.run_id, "seq": seq})
        # Stored before the event is queued: whoever sees the event can ask for its media.
        if self.media is not None:
            self.media.put_event(event)
        if self._on_media is not None and event.images:
            self._on_media(event)
        messages = event_messages(event, self._transport)
        if self.engine is None:
            stored = self._put(messages, event.source.id)
        else:
            # Crash consistency with the outbox (docs/rules.md): the rules commit the event
            # before the outbox stores it, so a kill at any instant leaves no stored event
            # outside the rules' state; and what a rules call hands out is stored before the
            # next call, which the engine takes as the receipt (until then a restart hands
            # it out again).
            with self.engine_lock:
                composites = self._feed_rules(event)
                stored = self._put(messages, event.source.id)
                self._put_composites(composites)
        if not stored:
            return
        with self._count_lock:
            self.accepted += 1
        self._wake()

    def _feed_rules(self, event: Event) -> list[CompositeEvent]:
        assert self.engine is not None
        try:
            return self.engine.process(event)
        except Exception as exc:  # the event itself must still reach the outbox
            self._count("rules_error")
            logger.error("rules: event %s from %s not counted by the rules (counted as "
                         "rules_error): %s", event.id, event.source.id, exc)
            return []

    def _put_composites(self, composites: list[CompositeEvent]) -> None:
        """Persist composite events (new, updated or final); call with ``engine_lock``."""
        for composite in composites:
            if self._put([composite_message(composite)], f"rule {composite.rule.id}"):
                with self._count_lock:
                    self.composites += 1
        if composites:
            self._wake()

    def tick(self) -> None:
        """Let rule windows close with time, even when no event arrives."""
        self._store_errors.tick()
        if self.engine is not None:
            with self.engine_lock:
                self._put_composites(self.engine.tick())

    def _put(self, messages: list[OutboxMessage], origin: str) -> bool:
        try:
            return self._outbox.put_many(messages)
        except OutboxError as exc:
            self._count("outbox_error")
            line = f"{origin}: event not stored (counted as outbox_error): {exc}"
            self._store_errors.add("outbox_error", 1, lambda: line)
            return False
