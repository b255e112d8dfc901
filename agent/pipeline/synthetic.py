"""The synthetic source: events at a fixed rate, numbered, without cameras or microphones.

It exercises the whole backbone (rules, outbox, MQTT) end to end and drives the benchmarks and
fault tests: the dispatcher numbers every accepted event (``run_id``, ``seq``), so a
subscriber can tell exactly what is missing.
"""

from __future__ import annotations

import itertools
from typing import Any

from agent.clock import Clock, utc_datetime
from agent.events.schema import DeviceRef, Event, Label, LabelName, Prediction, SourceRef
from agent.pipeline.base import EventSink, Worker
from agent.sources.base import SourceState, StatusListener
from agent.sources.config import SyntheticConfig

LabelLookup = Any  # Callable[[str], LabelName | None]


class SyntheticWorker(Worker):
    """Emits ``config.rate`` events per second (``config.count`` in all, when set)."""

    kind = "synthetic"

    def __init__(
        self,
        config: SyntheticConfig,
        device: DeviceRef,
        emit: EventSink,
        clock: Clock,
        status_listener: StatusListener | None = None,
        label_names: LabelLookup | None = None,
    ) -> None:
        super().__init__(config.id, emit, clock, status_listener)
        self.config = config
        self._source = SourceRef(
            id=config.id, kind=config.kind,  # type: ignore[arg-type]
            name=config.display_name, location=config.location,
        )
        self._device = device
        def name(lid: str) -> LabelName:
            found = label_names(lid) if label_names else None
            return found or LabelName(en=lid, ko=lid)

        self._labels = [Label(id=lid, name=name(lid)) for lid in config.labels]
        self.seq = 0  # events made so far
        self._padding = "x" * config.payload_bytes

    def make_event(self) -> Event:
        """The next event (also used by benchmarks without a thread)."""
        label = self._labels[self.seq % len(self._labels)]
        metadata: dict[str, Any] = dict(self.config.metadata)
        if self._padding:
            metadata["padding"] = self._padding
        now = utc_datetime(self._clock.time())
        event = Event(
            kind="synthetic",
            use_case=self.config.use_case,
            timestamp=now,
            device=self._device,
            source=self._source,
            label=label,
            predictions=[Prediction(label=label, confidence=0.9)],
            metadata=metadata,
        )
        self.seq += 1
        return event

    def _run(self) -> None:
        self.tracker.set(SourceState.RUNNING)
        interval = 1.0 / self.config.rate
        next_at = self._clock.monotonic()
        for _ in itertools.count():
            if self._stop.is_set():
                return
            if self.config.count is not None and self.seq >= self.config.count:
                self.tracker.set(SourceState.ENDED, f"emitted {self.config.count} events")
                while not self._stop.wait(1.0):
                    self.beat()
                return
            self.beat()
            if self.detection_enabled:
                self.emit(self.make_event())
            next_at += interval
            if self.config.burst and self.seq % self.config.burst == 0:
                next_at += self.config.burst_pause  # a sensor that fires in bursts
            delay = next_at - self._clock.monotonic()
            while delay > 0 and not self._stop.is_set():
                # Beat at least once a second, so a slow rate or a long pause between
                # bursts never looks like a hung thread to the watchdog.
                self._stop.wait(min(delay, 1.0))
                self.beat()
                delay = next_at - self._clock.monotonic()
            if delay < -1.0:
                next_at = self._clock.monotonic()  # fell behind by a second: do not burst

    def stats(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "state": self.tracker.state.value,
            "events_emitted": self.events_emitted,
            "seq": self.seq,
            "rate": self.config.rate,
            "enabled": self.detection_enabled,
            "reconnects_last_hour": self.tracker.reconnects_last_hour(),
        }
