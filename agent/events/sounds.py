"""Sounds with a lifecycle: per-window classifications -> occurrences -> ``kind: sound`` events.

A listened label that crosses its confidence threshold (in a window loud enough for it)
starts an occurrence, published as ``new``; it ends ``max_not_heard`` seconds after it was
last heard, published as ``end``. In between, ``update`` is published only when confidence or
level rose notably and not more often than ``updates.min_interval_s``. All three share the
occurrence's ``track_id``. Times come from the audio (each window's end time), never from the
wall clock of the processing thread, so a file replayed at any speed gives the same events.

Window times: a window covers ``[end - window_s, end]``; a sound heard in it is placed at the
window's centre, so ``started_at``/``ended_at`` are accurate to about half a window (0.5 s).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from agent.clock import utc_datetime
from agent.events.config import UpdateConfig
from agent.events.media import wav_media
from agent.events.schema import (
    DeviceRef,
    Event,
    Label,
    Media,
    MetadataValue,
    ModelRef,
    Phase,
    Prediction,
    SoundInfo,
    SourceRef,
)

FloatArray = npt.NDArray[np.float32]

FLOOR_DBFS = -120.0
"""Level reported for digital silence (log of zero); also keeps JSON free of -Infinity."""


def rms_dbfs(samples: FloatArray) -> tuple[float, float]:
    """RMS and its level in dBFS (0 dBFS: a full-scale square wave), floored at -120."""
    if len(samples) == 0:
        return 0.0, FLOOR_DBFS
    # Not np.dot: OpenBLAS threads a dot product this long, and its idle threads then spin
    # for a while after every call (a quarter of a core at two windows a second).
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return rms, max(FLOOR_DBFS, float(20.0 * np.log10(rms))) if rms > 0 else FLOOR_DBFS


@dataclass(frozen=True)
class LabelRule:
    """How one listened label becomes a sound: class index, thresholds, VAD agreement."""

    label: Label
    index: int
    threshold: float
    min_volume: float
    needs_vad: bool = False


@dataclass(frozen=True)
class Window:
    """One classified (or gated) window of audio.

    ``scores`` is None when the window was too quiet to classify; ``vad`` is the VAD's
    speech probability, None when no VAD runs.
    """

    start: float
    end: float
    dbfs: float
    scores: FloatArray | None
    vad: float | None = None

    @property
    def centre(self) -> float:
        return (self.start + self.end) / 2.0


@dataclass
class Occurrence:
    """One sound from ``new`` to ``end``."""

    rule: LabelRule
    track_id: str
    started_at: float
    first_window_start: float
    last_heard: float
    last_heard_end: float
    confidence: float
    sound_level: float
    best_scores: FloatArray
    published_confidence: float
    published_level: float
    published_at: float
    updates: int = 0
    ended_at: float | None = None


@dataclass(frozen=True)
class Transition:
    """A lifecycle step to publish: phase, the occurrence, the audio time it was decided at."""

    phase: Phase
    occurrence: Occurrence
    at: float
    scores: FloatArray


@dataclass
class SoundLifecycle:
    """Turns windows into ``new``/``update``/``end`` transitions, per listened label."""

    rules: Sequence[LabelRule]
    max_not_heard: float
    updates: UpdateConfig = field(default_factory=UpdateConfig)
    vad_threshold: float = 0.5
    open: dict[str, Occurrence] = field(default_factory=dict)

    def heard(self, rule: LabelRule, window: Window) -> bool:
        """Whether ``rule``'s label counts as heard in ``window``."""
        if window.scores is None or window.dbfs < rule.min_volume:
            return False
        if float(window.scores[rule.index]) < rule.threshold:
            return False
        return not rule.needs_vad or (window.vad is not None and window.vad >= self.vad_threshold)

    def step(self, window: Window) -> list[Transition]:
        """Advance by one window; the transitions it causes, in a stable order."""
        out: list[Transition] = []
        for rule in self.rules:
            occ = self.open.get(rule.label.id)
            if self.heard(rule, window):
                assert window.scores is not None
                conf = float(window.scores[rule.index])
                if occ is None:
                    occ = Occurrence(
                        rule=rule, track_id=str(uuid.uuid4()), started_at=window.centre,
                        first_window_start=window.start, last_heard=window.centre,
                        last_heard_end=window.end, confidence=conf, sound_level=window.dbfs,
                        best_scores=window.scores, published_confidence=conf,
                        published_level=window.dbfs, published_at=window.end,
                    )
                    self.open[rule.label.id] = occ
                    out.append(Transition("new", occ, window.end, window.scores))
                    continue
                occ.last_heard = window.centre
                occ.last_heard_end = window.end
                if conf > occ.confidence:
                    occ.confidence = conf
                    occ.best_scores = window.scores
                occ.sound_level = max(occ.sound_level, window.dbfs)
                if self._wants_update(occ, window.end):
                    occ.published_confidence = occ.confidence
                    occ.published_level = occ.sound_level
                    occ.published_at = window.end
                    occ.updates += 1
                    out.append(Transition("update", occ, window.end, window.scores))
            elif occ is not None and window.end - occ.last_heard_end >= self.max_not_heard:
                out.append(self._end(occ, window.end))
        return out

    def _wants_update(self, occ: Occurrence, now: float) -> bool:
        u = self.updates
        if not u.enabled or now - occ.published_at < u.min_interval_s:
            return False
        return (occ.confidence - occ.published_confidence >= max(u.min_confidence_rise, 1e-9)
                or occ.sound_level - occ.published_level >= max(u.min_level_rise_db, 1e-9))

    def _end(self, occ: Occurrence, at: float) -> Transition:
        occ.ended_at = occ.last_heard
        del self.open[occ.rule.label.id]
        return Transition("end", occ, at, occ.best_scores)

    def flush(self, at: float) -> list[Transition]:
        """End every open occurrence (the stream stopped, ended or was lost)."""
        return [self._end(occ, max(at, occ.last_heard_end)) for occ in list(self.open.values())]


class ClipRecorder:
    """Keeps recent audio (for windows and pre-roll) and collects each open sound's clip.

    Memory stays bounded: the history is a ring of ``pre_roll + window + 1 s``; a clip stops
    growing at ``max_seconds`` (it keeps the onset, which is what a listener needs).
    """

    def __init__(self, sample_rate: int, pre_roll_s: float, window_s: float,
                 max_seconds: float) -> None:
        self.rate = sample_rate
        self.pre_roll_s = pre_roll_s
        self.max_samples = max(1, int(max_seconds * sample_rate))
        self._hist = np.zeros(int((pre_roll_s + window_s + 1.0) * sample_rate), np.float32)
        self.total = 0  # samples ever fed
        self.end_time = 0.0  # time of the end of the newest sample
        self._clips: dict[str, tuple[int, list[FloatArray], int]] = {}  # start, parts, length

    def feed(self, samples: FloatArray, end_time: float) -> None:
        """Append new audio (every chunk, whether classified or not)."""
        cap = len(self._hist)
        tail = samples[-cap:]
        pos = (self.total + len(samples) - len(tail)) % cap
        first = min(len(tail), cap - pos)
        self._hist[pos:pos + first] = tail[:first]
        self._hist[: len(tail) - first] = tail[first:]
        self.total += len(samples)
        self.end_time = end_time
        for key, (start, parts, have) in self._clips.items():
            room = self.max_samples - have
            if room > 0:
                take = samples[:room].copy()
                parts.append(take)
                self._clips[key] = (start, parts, have + len(take))

    def recent(self, n: int) -> FloatArray:
        """A copy of the newest ``n`` samples (zeros before the stream began)."""
        cap = len(self._hist)
        n = min(n, cap)
        out = np.zeros(n, np.float32)
        have = min(n, self.total)
        if have:
            idx = (np.arange(self.total - have, self.total) % cap)
            out[n - have:] = self._hist[idx]
        return out

    def index(self, t: float) -> int:
        """The stream position (in samples) of time ``t``."""
        return self.total - round((self.end_time - t) * self.rate)

    def start(self, key: str, from_time: float) -> None:
        """Open a clip from ``from_time`` minus the pre-roll (as far as the history reaches)."""
        first = max(self.index(from_time - self.pre_roll_s), self.total - len(self._hist), 0)
        first = min(first, self.total)
        take = self.recent(self.total - first)[: self.max_samples]
        self._clips[key] = (first, [take], len(take))

    def media(self, key: str, until: float | None = None) -> Media | None:
        """The clip so far as WAV ``Media``, cut at ``until`` when given."""
        clip = self._clips.get(key)
        if clip is None:
            return None
        start, parts, _ = clip
        samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if until is not None:
            samples = samples[: max(1, self.index(until) - start)]
        if len(samples) == 0:
            return None
        return wav_media(samples, self.rate)

    def finish(self, key: str, until: float | None = None) -> Media | None:
        """The final clip; forgets it."""
        out = self.media(key, until)
        self._clips.pop(key, None)
        return out

    def drop(self, key: str) -> None:
        """Forget a clip without encoding it."""
        self._clips.pop(key, None)


class Microphone(Protocol):
    """What sound events say of their microphone; ``agent.sources.config.MicrophoneConfig``
    is one. A protocol, not that class: the events stage sits below the sources."""

    @property
    def id(self) -> str: ...
    @property
    def display_name(self) -> str: ...
    @property
    def location(self) -> str | None: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def use_case(self) -> str: ...
    @property
    def top_k(self) -> int: ...
    @property
    def metadata(self) -> Mapping[str, MetadataValue]: ...


def microphone_ref(config: Microphone) -> SourceRef:
    """The microphone object carried by events: id, name, location, status."""
    return SourceRef(id=config.id, kind="microphone", name=config.display_name,
                     location=config.location, status="active" if config.enabled else "inactive")


class SoundEventBuilder:
    """Builds ``kind: sound`` events for one microphone."""

    def __init__(self, config: Microphone, device: DeviceRef, model: ModelRef | None,
                 class_labels: Sequence[Label]) -> None:
        self.config = config
        self.device = device
        self.model = model
        self.class_labels = list(class_labels)
        self.source = microphone_ref(config)

    def predictions(self, scores: FloatArray) -> list[Prediction]:
        """The top ``top_k`` classes of a window, best first."""
        k = min(self.config.top_k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Prediction(label=self.class_labels[int(i)],
                           confidence=float(np.clip(scores[int(i)], 0.0, 1.0))) for i in top]

    def build(self, step: Transition, audio: Media | None) -> Event:
        """The event for one lifecycle step."""
        occ = step.occurrence
        rule = occ.rule
        confidence = occ.confidence if step.phase != "new" else float(step.scores[rule.index])
        return Event(
            kind="sound",
            use_case=self.config.use_case,
            timestamp=utc_datetime(step.at),
            device=self.device,
            source=self.source,
            model=self.model,
            phase=step.phase,
            track_id=occ.track_id,
            started_at=utc_datetime(occ.started_at),
            ended_at=utc_datetime(occ.ended_at) if occ.ended_at is not None else None,
            label=rule.label,
            predictions=self.predictions(step.scores),
            sound=SoundInfo(
                confidence=min(1.0, max(0.0, confidence)),
                confidence_threshold=rule.threshold,
                sound_level=round(occ.sound_level, 2),
                sound_level_threshold=rule.min_volume,
            ),
            audio=audio,
            metadata=dict(self.config.metadata),
        )
