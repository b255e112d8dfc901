"""Runtime commands over MQTT: ``{prefix}/{device}/set/...`` in, ``.../result/...`` out.

Every message under ``set/`` gets exactly one JSON result on the mirrored ``result/`` topic,
except an empty one (zero bytes), which is ignored: that is what a broker delivers when
someone clears a retained command, and it must never run the command again::

    {"request_id": "r1", "command": "sources.detection", "ok": true, "error": null,
     "result": {"source": "front", "enabled": false}}

A command is checked completely before anything changes: the topic names a known command,
the command is allowed (``commands.allow``), the payload is at most 64 KiB of JSON that
matches the command's pydantic model (no extra keys, no coercion of types), and the source
or rule exists and supports it. Only then does the handler run, so a bad command changes
nothing. Handlers run on the MQTT network thread (``MqttLink.subscribe``): they only flip
flags or set events for the daemon's main loop; a snapshot (JPEG encoding) goes to one
short-lived-queue thread so the network loop never waits for it.

MQTT 5 request/response: a command that carries a response topic is answered there instead
of on ``result/...``, with its correlation data echoed, for every command.

``set/media/get`` (``{"event_id": ..., "role": ...}``, no role: all) sends the bytes of an
event's images and clip from the media store, each before the JSON answer that lists them:
under MQTT 5 with a response topic, on that topic itself (content type and user properties
``event_id``, ``role``, ``sha256`` tell bytes from the answer); otherwise on
``result/media/get/{event_id}/{role}``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from agent.events.schema import Event
from agent.media.store import MediaMissing, MediaStore
from agent.mqtt.config import COMMAND_NAMES, CommandsConfig
from agent.mqtt.payloads import (
    THRESHOLD_KEYS,
    EnabledPayload,
    MediaGetPayload,
    Payload,
    ThresholdsPayload,
    describe_errors,
)

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 * 1024
"""Larger command payloads are refused unread: no legitimate command comes near it."""

_MAX_ECHO = 64  # characters of a bad topic or id echoed into logs and results
_MAX_SUFFIX = 256  # a longer command topic is answered on result/invalid, not mirrored
_SLOW_QUEUE = 4  # snapshot requests waiting at most; more are refused as busy


# -- what the router acts on ---------------------------------------------------------------


class DispatcherLike(Protocol):
    """The part of ``agent.dispatch.Dispatcher`` commands use."""

    @property
    def engine(self) -> Any | None: ...

    def emit(self, event: Event) -> None: ...


class CommandTarget(Protocol):
    """The part of ``agent.daemon.Daemon`` commands use (a recording fake in tests)."""

    @property
    def workers(self) -> Mapping[str, Any]: ...

    @property
    def dispatcher(self) -> DispatcherLike: ...

    def request_reload(self) -> None: ...

    def request_stats(self) -> None: ...

    def note_runtime_change(self, source_id: str, what: str) -> None:
        """A command changed a source's detection or thresholds (undone by a reload)."""


# -- results -------------------------------------------------------------------------------


class CommandError(Exception):
    """A refused command; ``reason`` is the stats bucket, the message goes to the client."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Later:
    """A handler's answer when the work must not run on the network thread."""

    work: Callable[[], Any]


@dataclass(frozen=True)
class Reply:
    """Where a command's answer goes: ``result/...``, or the MQTT 5 response topic with the
    request's correlation data."""

    topic: str
    correlation: bytes | None = None
    response_topic: bool = False


@dataclass(frozen=True)
class Request:
    """A command that passed every check but the target's own."""

    name: str
    target_id: str | None
    payload: Any
    reply: Reply | None = None


Handler = Callable[[Request], Any]


@dataclass(frozen=True)
class Command:
    """One registry entry: topic pattern under ``set/``, payload model, handler."""

    name: str
    pattern: tuple[str, ...]
    model: type[Payload]
    handler: Handler

    def match(self, parts: list[str]) -> tuple[bool, str | None]:
        """Whether the topic levels fit the pattern, and the ``{id}`` level if any."""
        if len(parts) != len(self.pattern):
            return False, None
        captured: str | None = None
        for want, got in zip(self.pattern, parts, strict=True):
            if want == "{id}":
                if not got:
                    return False, None
                captured = got
            elif want != got:
                return False, None
        return True, captured


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "…"


class _SlowLane:
    """One named thread for commands too slow for the network thread; a short queue."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue(_SLOW_QUEUE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> bool:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            job()

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


class CommandRouter:
    """Checks, runs and answers commands; ``handle`` is the MQTT subscription callback.

    ``publish(topic, payload[, properties])`` sends a result (properties: MQTT 5 publish
    properties, passed only when there are some); ``run_slow(job) -> bool`` runs a job off the
    network thread (default: the router's own ``commands`` thread) and says whether it was
    accepted.
    """

    def __init__(
        self,
        base_topic: str,
        target: CommandTarget,
        publish: Callable[..., None],
        config: CommandsConfig | None = None,
        run_slow: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None:
        self._set = f"{base_topic}/set"
        self._result = f"{base_topic}/result"
        self._target = target
        self._publish = publish
        self._config = config or CommandsConfig()
        self._lane = _SlowLane() if run_slow is None else None
        self._run_slow = run_slow or self._lane.submit  # type: ignore[union-attr]
        self._count_lock = threading.Lock()
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.registry: dict[str, Command] = {}
        for command in (
            Command("sources.detection", ("sources", "{id}", "detection"), EnabledPayload,
                    self._detection),
            Command("sources.thresholds", ("sources", "{id}", "thresholds"), ThresholdsPayload,
                    self._thresholds),
            Command("sources.snapshot", ("sources", "{id}", "snapshot"), Payload,
                    self._snapshot),
            Command("rules.enabled", ("rules", "{id}", "enabled"), EnabledPayload,
                    self._rule_enabled),
            Command("config.reload", ("config", "reload"), Payload, self._reload),
            Command("stats.publish", ("stats",), Payload, self._stats),
            Command("media.get", ("media", "get"), MediaGetPayload, self._media_get),
        ):
            self.registry[command.name] = command
        assert set(self.registry) == set(COMMAND_NAMES), "registry and CommandName disagree"

    @property
    def subscription(self) -> str:
        """The topic filter to subscribe ``handle`` to."""
        return f"{self._set}/#"

    def set_config(self, config: CommandsConfig) -> None:
        """Take a reloaded ``commands:`` section (the allow-list applies at once)."""
        self._config = config

    def stats(self) -> dict[str, Any]:
        """Commands carried out, and refused by reason."""
        with self._count_lock:
            return {"accepted": self.accepted, "rejected": dict(self.rejected)}

    def close(self) -> None:
        """Stop the snapshot thread (pending snapshots are answered first)."""
        if self._lane is not None:
            self._lane.close()

    # -- the callback ---------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, properties: Any = None) -> None:
        """Answer one message under ``set/``; never raises. An empty message is ignored.

        ``properties``: the MQTT 5 properties of the message (response topic, correlation
        data), None under MQTT 3.1.1."""
        if not payload:
            logger.info("command set/%s: empty message ignored (that clears a retained "
                        "command; send {} to run a command that takes no arguments)",
                        _short(topic[len(self._set) + 1:]))
            return
        suffix = topic[len(self._set) + 1:] if topic.startswith(self._set + "/") else ""
        result_topic = self._result + (f"/{suffix}" if suffix else "")
        if len(suffix) > _MAX_SUFFIX:
            result_topic = f"{self._result}/invalid"
        reply = self._reply_to(result_topic, properties)
        name: str | None = None
        request_id = self._peek_request_id(payload)
        try:
            command, target_id = self._route(suffix)
            name = command.name
            self._authorise(name)
            data = self._parse(payload)
            try:
                parsed = command.model.model_validate(data)
            except ValidationError as exc:
                raise CommandError("malformed",
                                   f"invalid payload: {describe_errors(exc)}") from None
            answer = command.handler(Request(name, target_id, parsed, reply))
            if isinstance(answer, Later):
                self._defer(answer, name, target_id, request_id, reply)
                return
            self._ok(reply, name, target_id, request_id, answer)
        except CommandError as exc:
            self._refuse(reply, name, suffix, request_id, exc.reason, str(exc))
        except Exception as exc:  # a bug in a handler must cost one command, not the link
            logger.exception("command %s: failed", name or _short(suffix))
            self._respond(reply, name, request_id, False, f"internal error: {exc}", None)
            with self._count_lock:
                self.rejected["internal"] += 1

    @staticmethod
    def _reply_to(result_topic: str, properties: Any) -> Reply:
        """The MQTT 5 response topic when the request names a usable one, else ``result/``."""
        response = getattr(properties, "ResponseTopic", None)
        correlation = getattr(properties, "CorrelationData", None)
        correlation = bytes(correlation) if correlation is not None else None
        if isinstance(response, str) and response and not any(c in response for c in "#+\0"):
            return Reply(response, correlation, response_topic=True)
        if response is not None:
            logger.warning("command: response topic %r is not a topic name; answering on %s",
                           _short(str(response)), result_topic)
        return Reply(result_topic, correlation)

    # -- checks ---------------------------------------------------------------------------

    def _route(self, suffix: str) -> tuple[Command, str | None]:
        parts = suffix.split("/")
        for command in self.registry.values():
            matched, target_id = command.match(parts)
            if matched:
                return command, target_id
        raise CommandError("unknown", f"unknown command set/{_short(suffix)} (known: "
                           "sources/{id}/detection, sources/{id}/thresholds, "
                           "sources/{id}/snapshot, rules/{id}/enabled, config/reload, stats, "
                           "media/get)")

    def _authorise(self, name: str) -> None:
        allow = self._config.allow
        if allow is not None and name not in allow:
            raise CommandError("unauthorised",
                               f"command {name} is not allowed on this device (commands.allow)")

    @staticmethod
    def _parse(payload: bytes) -> Any:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise CommandError("malformed", f"payload too large ({len(payload)} bytes; "
                               f"at most {MAX_PAYLOAD_BYTES})")
        if not payload.strip():
            return {}  # `mosquitto_pub -n`: a command without arguments
        try:
            # Decoded here: json.loads(bytes) would also accept UTF-16 and UTF-32.
            data = json.loads(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise CommandError("malformed", "payload is not UTF-8 JSON") from None
        except ValueError as exc:
            raise CommandError("malformed", f"payload is not JSON: {exc}") from None
        except RecursionError:
            raise CommandError("malformed", "payload is nested too deeply") from None
        if not isinstance(data, dict):
            raise CommandError("malformed", "payload must be a JSON object")
        return data

    @classmethod
    def _peek_request_id(cls, payload: bytes) -> str | int | None:
        """The request id to echo, when there is one, whatever else is wrong with the command
        (so even an unknown or refused command's result can be matched to its request)."""
        try:
            data = cls._parse(payload)
        except CommandError:
            return None
        rid = data.get("request_id")
        if isinstance(rid, str) and len(rid) <= 128:
            return rid
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
        return None

    def _worker(self, request: Request) -> Any:
        assert request.target_id is not None
        workers = self._target.workers
        worker = workers.get(request.target_id)
        if worker is None:
            try:
                running = ", ".join(sorted(workers)) or "none"
            except RuntimeError:  # a reload on the main thread changed the dict meanwhile
                running = "changing"
            raise CommandError("unknown", f"unknown source {_short(request.target_id)} "
                               f"(running: {running})")
        return worker

    # -- handlers -------------------------------------------------------------------------

    def _detection(self, request: Request) -> Any:
        worker = self._worker(request)
        enabled = request.payload.enabled
        worker.detection_enabled = enabled
        self._target.note_runtime_change(str(request.target_id), "detection")
        return {"source": request.target_id, "enabled": enabled}

    def _thresholds(self, request: Request) -> Any:
        worker = self._worker(request)
        setter = getattr(worker, "set_thresholds", None)
        if not callable(setter):
            raise CommandError("unsupported",
                               f"source {request.target_id} does not support thresholds")
        changes = request.payload.changes()
        kind = getattr(worker, "kind", "")
        if kind in THRESHOLD_KEYS:
            top, per_label = THRESHOLD_KEYS[kind]
            wrong = [k for k in changes if k not in top]
            wrong += [f"labels.{lid}.{k}" for lid, values in changes.get("labels", {}).items()
                      for k in values if k not in per_label]
            if wrong:
                raise CommandError("malformed", f"{kind} {request.target_id} has no "
                                   f"{', '.join(_short(w) for w in wrong)}")
        try:
            answer = setter(changes)
        except (ValueError, KeyError) as exc:
            # The worker checks label ids against what it tracks; it changes nothing then.
            message = exc.args[0] if exc.args else str(exc)
            raise CommandError("invalid", str(message)) from None
        self._target.note_runtime_change(str(request.target_id), "thresholds")
        return answer

    def _snapshot(self, request: Request) -> Any:
        worker = self._worker(request)
        take = getattr(worker, "snapshot_now", None)
        if not callable(take):
            raise CommandError("unsupported", f"source {request.target_id} takes no snapshots")
        dispatcher = self._target.dispatcher

        def work() -> Any:
            event = take()
            if event is None:
                raise CommandError("failed", f"camera {request.target_id} has no frame yet")
            dispatcher.emit(event)
            return {"source": request.target_id, "event_id": event.id}

        return Later(work)

    def _rule_enabled(self, request: Request) -> Any:
        assert request.target_id is not None
        engine = self._target.dispatcher.engine
        if engine is None:
            raise CommandError("unknown", "no rules configured")
        enabled = request.payload.enabled
        try:
            engine.set_enabled(request.target_id, enabled)
        except KeyError:
            raise CommandError("unknown", f"unknown rule {_short(request.target_id)}") from None
        return {"rule": request.target_id, "enabled": enabled}

    def _reload(self, request: Request) -> Any:
        self._target.request_reload()
        # The outcome is logged by the main loop; a bad file keeps the running config.
        return {"queued": True}

    def _stats(self, request: Request) -> Any:
        self._target.request_stats()
        return {"queued": True}

    def _media_get(self, request: Request) -> Any:
        store: MediaStore | None = getattr(self._target, "media", None)
        if store is None:
            raise CommandError("unsupported", "this device keeps no media (media.enabled is off "
                               "and mqtt.media_transport is not request)")
        payload: MediaGetPayload = request.payload
        reply = request.reply
        assert reply is not None

        def work() -> Any:
            try:
                found = store.get(payload.event_id, payload.role)
            except MediaMissing as exc:
                raise CommandError("not_found", str(exc)) from None
            listed = []
            for item in found:
                if reply.response_topic:
                    topic = reply.topic
                    user = [("event_id", payload.event_id), ("role", item.role),
                            ("sha256", str(item.info.get("sha256", "")))]
                else:
                    topic = f"{reply.topic}/{payload.event_id}/{item.role}"
                    user = []
                # Properties only where the client speaks MQTT 5 request/response.
                content_type = str(item.info.get("content_type", "application/octet-stream"))
                self._send(topic, item.data, reply.correlation,
                           content_type if reply.response_topic else None, user)
                listed.append({**item.info, "topic": topic})
            return {"event_id": payload.event_id, "media": listed}

        return Later(work)

    # -- answers --------------------------------------------------------------------------

    def _defer(self, later: Later, name: str, target_id: str | None,
               request_id: str | int | None, reply: Reply) -> None:
        def job() -> None:
            try:
                answer = later.work()
            except CommandError as exc:
                self._refuse(reply, name, name, request_id, exc.reason, str(exc))
            except Exception as exc:
                logger.exception("command %s: failed", name)
                self._respond(reply, name, request_id, False, f"internal error: {exc}",
                              None)
                with self._count_lock:
                    self.rejected["internal"] += 1
            else:
                self._ok(reply, name, target_id, request_id, answer)

        if not self._run_slow(job):
            self._refuse(reply, name, name, request_id, "busy",
                         f"busy: {_SLOW_QUEUE} slow commands are already waiting; try again")

    def _ok(self, reply: Reply, name: str, target_id: str | None,
            request_id: str | int | None, answer: Any) -> None:
        logger.info("command %s%s: done (request %s)", name,
                    f" {target_id}" if target_id else "", request_id)
        with self._count_lock:
            self.accepted += 1
        self._respond(reply, name, request_id, True, None, answer)

    def _refuse(self, reply: Reply, name: str | None, what: str,
                request_id: str | int | None, reason: str, message: str) -> None:
        logger.warning("command %s refused (%s): %s", name or f"set/{_short(what)}", reason,
                       message)
        with self._count_lock:
            self.rejected[reason] += 1
        self._respond(reply, name, request_id, False, message, None)

    def _respond(self, reply: Reply, name: str | None, request_id: str | int | None, ok: bool,
                 error: str | None, result: Any) -> None:
        body = {"request_id": request_id, "command": name, "ok": ok, "error": error,
                "result": result}
        try:
            payload = json.dumps(body, default=str).encode()
        except (TypeError, ValueError):
            body["result"] = None
            payload = json.dumps(body, default=str).encode()
        self._send(reply.topic, payload, reply.correlation,
                   "application/json" if reply.response_topic else None, [])

    def _send(self, topic: str, payload: bytes, correlation: bytes | None,
              content_type: str | None, user: list[tuple[str, str]]) -> None:
        """Publish, with MQTT 5 properties when there is anything to say in them."""
        if correlation is None and content_type is None and not user:
            self._publish(topic, payload)
            return
        props = Properties(PacketTypes.PUBLISH)
        if correlation is not None:
            props.CorrelationData = correlation
        if content_type is not None:
            props.ContentType = content_type
        if user:
            props.UserProperty = user
        self._publish(topic, payload, props)
