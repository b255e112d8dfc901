"""The audio worker: one microphone through levels, gating, classification and sound events.

Per window (``hop_seconds`` apart, as long as the model's window, 0.975 s for YAMNet):
RMS and dBFS; below the gate the classifier does not run (the window is counted as gated);
otherwise the classifier (and, for speech labels, the VAD) scores it; the lifecycle turns
scores into ``new``/``update``/``end`` sound events with clips.

Errors never leave the thread: a device that cannot be opened or goes away is reported through
the ``StateTracker`` (``error`` or ``reconnecting``, with the detail) and reopened with
exponential backoff; a broken file is reported as ``error`` and the worker stops.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.clock import Clock
from agent.events.schema import DeviceRef, Label, LabelName
from agent.events.sounds import (
    ClipRecorder,
    LabelRule,
    SoundEventBuilder,
    SoundLifecycle,
    Transition,
    Window,
    rms_dbfs,
)
from agent.inference.audio import AudioClassifier, SileroVad, class_labels
from agent.inference.config import AudioModelConfig
from agent.inference.session import ModelLoadError
from agent.labels import LabelCatalogue, LabelCatalogueError, LabelInfo
from agent.pipeline.base import EventSink, Worker
from agent.sources.base import SourceState, StatusListener
from agent.sources.config import MicrophoneConfig, validate_listen
from agent.sources.microphone import AudioSource, SourceEnded, SourceError, open_source

logger = logging.getLogger(__name__)

SourceFactory = Callable[[MicrophoneConfig, Clock, threading.Event], AudioSource]


def _percentile(values: deque[float], q: float) -> float | None:
    return round(float(np.percentile(np.fromiter(values, float), q)), 3) if values else None


class _VadTrack:
    """Runs the VAD over the stream once (not once per overlapping window).

    Keeps each 32 ms chunk's probability with its stream position, so a window's speech
    probability is the highest among the chunks inside it.
    """

    def __init__(self, vad: SileroVad) -> None:
        self.vad = vad
        self.pos: int | None = None
        self.probs: deque[tuple[int, float]] = deque()

    def window(self, recorder: ClipRecorder, start: int, end: int) -> float:
        if self.pos is None or self.pos < start - SileroVad.CHUNK or self.pos > end:
            # A gap (gated windows, a reconnect): start afresh at this window.
            self.vad.reset()
            self.pos = start
            self.probs.clear()
        n = (end - self.pos) // SileroVad.CHUNK * SileroVad.CHUNK
        if n > 0:
            samples = recorder.recent(recorder.total - self.pos)[:n]
            for k, p in enumerate(self.vad.process(samples)):
                self.probs.append((self.pos + (k + 1) * SileroVad.CHUNK, p))
            self.pos += n
        while self.probs and self.probs[0][0] <= start:
            self.probs.popleft()
        return max((p for _, p in self.probs), default=0.0)


class AudioWorker(Worker):
    """One microphone (device or WAV file): capture -> levels -> gate -> classify -> events.

    ``catalogue``: the label of each class the classifier outputs, in index order (a
    ``LabelCatalogue`` stands for its AudioSet list). ``classifier`` may be None only with
    ``startup_error`` set: the worker then reports that error and does nothing else, so one
    misconfigured microphone never stops the others.
    """

    kind = "microphone"

    def __init__(
        self,
        config: MicrophoneConfig,
        classifier: AudioClassifier | None,
        catalogue: Sequence[LabelInfo] | LabelCatalogue,
        device: DeviceRef,
        emit: EventSink,
        clock: Clock,
        status_listener: StatusListener | None = None,
        *,
        vad: SileroVad | None = None,
        source_factory: SourceFactory = open_source,
        startup_error: str | None = None,
    ) -> None:
        super().__init__(config.id, emit, clock, status_listener)
        self.config = config
        self.classifier = classifier
        self.vad = vad
        self.startup_error = startup_error
        if classifier is None and startup_error is None:
            raise ValueError(f"microphone {config.id}: a classifier or a startup error is needed")
        self._source_factory = source_factory
        self._source: AudioSource | None = None
        infos = catalogue.audioset() if isinstance(catalogue, LabelCatalogue) else list(catalogue)
        self.class_labels = [self._label(info) for info in sorted(infos, key=lambda i: i.index)]
        by_id = {info.id: info.index for info in infos}
        vad_labels = set(config.vad.labels) if vad is not None else set()
        self.rules = [
            LabelRule(label=self.class_labels[by_id[lid]], index=by_id[lid],
                      threshold=config.label_threshold(lid),
                      min_volume=config.label_min_volume(lid), needs_vad=lid in vad_labels)
            for lid in dict.fromkeys(config.listen) if lid in by_id
        ]
        # The classifier runs when any listened label could count at this level.
        self._min_volume = config.min_volume
        self.gate_dbfs = min([config.min_volume, *(r.min_volume for r in self.rules)])
        self._builder = SoundEventBuilder(
            config, device, classifier.model_ref if classifier else None, self.class_labels)
        self._lifecycle = SoundLifecycle(self.rules, config.max_not_heard, config.updates,
                                         config.vad.threshold)
        self._vad_track = _VadTrack(vad) if vad is not None and vad_labels else None
        self._recorder: ClipRecorder | None = None
        # Figures for stats(); written by the worker thread only.
        self.windows = 0
        self.gated = 0
        self.classified = 0
        self.skipped = 0
        self.dbfs_last: float | None = None
        self._infer_ms: deque[float] = deque(maxlen=512)
        self._model_ms: deque[float] = deque(maxlen=512)
        self._pipeline_ms: deque[float] = deque(maxlen=512)
        self._latency_ms: deque[float] = deque(maxlen=512)
        self._overflows_before = 0
        self._overruns_before = 0

    def set_thresholds(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The thresholds command: microphone-wide ``threshold``/``min_volume`` and per label.

        A per-label value wins over a microphone-wide one given in the same change. All or
        nothing: a label this microphone does not listen for raises ``ValueError``.
        """
        labels: dict[str, dict[str, float]] = changes.get("labels", {})
        listened = {rule.label.id for rule in self.rules}
        unknown = sorted(set(labels) - listened)
        if unknown:
            raise ValueError(f"microphone {self.source_id} does not listen for "
                             f"{', '.join(unknown)} (listens for {', '.join(sorted(listened))})")
        rules = []
        for rule in self.rules:
            own = labels.get(rule.label.id, {})
            rules.append(dataclasses.replace(
                rule,
                threshold=own.get("threshold", changes.get("threshold", rule.threshold)),
                min_volume=own.get("min_volume", changes.get("min_volume", rule.min_volume)),
            ))
        base = changes.get("min_volume", self._min_volume)
        # Swap whole objects: the worker thread sees the old set or the new one, never a mix.
        self._min_volume = base
        self.gate_dbfs = min([base, *(r.min_volume for r in rules)])
        self.rules = rules
        self._lifecycle.rules = rules
        return {"min_volume": base, "gate_dbfs": self.gate_dbfs,
                "labels": {r.label.id: {"threshold": r.threshold, "min_volume": r.min_volume}
                           for r in rules}}

    def _label(self, info: LabelInfo) -> Label:
        settings = self.config.labels.get(info.id)
        override = settings.name if settings is not None else None
        return Label(id=info.id, name=LabelName(
            en=(override.en if override and override.en else info.en),
            ko=(override.ko if override and override.ko else info.ko),
        ))

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        cfg = self.config
        if self.startup_error is not None:
            logger.error("%s", self.startup_error)
            self.tracker.set(SourceState.ERROR, self.startup_error)
            return
        backoff = cfg.reconnect_min_s
        lost = False
        while not self._stop.is_set():
            source = self._source_factory(cfg, self._clock, self._stop)
            self._source = source
            try:
                source.open()
            except SourceError as exc:
                source.close()
                if exc.permanent:
                    logger.error("%s", exc)
                    self.tracker.set(SourceState.ERROR, str(exc))
                    return
                detail = f"{exc}; retrying in {backoff:.0f} s"
                logger.warning("%s", detail)
                self.tracker.set(SourceState.RECONNECTING if lost else SourceState.ERROR, detail)
                self._sleep(backoff)
                backoff = min(backoff * 2.0, cfg.reconnect_max_s)
                continue
            backoff = cfg.reconnect_min_s
            self.tracker.set(SourceState.RUNNING, source.describe())
            try:
                self._pump(source)
            except SourceEnded:
                self._flush()
                self.tracker.set(SourceState.ENDED, f"end of {cfg.file}")
                self._close_source(source)
                while not self._stop.wait(1.0):
                    self.beat()
                return
            except SourceError as exc:
                # Report first: releasing a vanished device can take a while.
                if exc.permanent:
                    logger.error("%s", exc)
                    self.tracker.set(SourceState.ERROR, str(exc))
                else:
                    detail = f"{exc}; reopening in {backoff:.0f} s"
                    logger.warning("%s", detail)
                    self.tracker.set(SourceState.RECONNECTING, detail)
                self._flush()
                self._close_source(source)
                if exc.permanent:
                    return
                lost = True
                self._sleep(backoff)
                backoff = min(backoff * 2.0, cfg.reconnect_max_s)
                continue
            self._flush()
            self._close_source(source)

    def _close_source(self, source: AudioSource) -> None:
        self._overflows_before += source.overflows
        self._overruns_before += source.driver_overruns
        source.close()
        self._source = None

    def _sleep(self, seconds: float) -> None:
        """Wait, still beating, so the watchdog sees a healthy (if waiting) thread."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 1.0))
            self.beat()

    def _close(self) -> None:
        source = self._source
        if source is not None:
            source.close()

    def _pump(self, source: AudioSource) -> None:
        """Read chunks and process every complete window until stopped, lost or ended."""
        assert self.classifier is not None
        cfg = self.config
        rate = source.target_rate
        win = self.classifier.window_samples
        hop = max(1, round(cfg.hop_seconds * rate))
        recorder = ClipRecorder(rate, cfg.clip.pre_roll_s, win / rate, cfg.clip.max_seconds)
        self._recorder = recorder
        capacity = int((cfg.clip.pre_roll_s + win / rate + 1.0) * rate)
        next_end = win  # stream position of the next window's end
        while not self._stop.is_set():
            self.beat()
            chunk = source.read(0.5, want=next_end - recorder.total)
            if chunk is None or len(chunk.samples) == 0:
                continue
            recorder.feed(chunk.samples, chunk.end_time)
            while recorder.total >= next_end:
                behind = recorder.total - next_end
                if behind + win > capacity:
                    # Fell behind more than the history holds: skip to the newest window.
                    skip = (behind + win - capacity) // hop + 1
                    self.skipped += skip
                    next_end += skip * hop
                    continue
                samples = recorder.recent(behind + win)[:win]
                end = recorder.end_time - behind / rate
                self._window(samples, end - win / rate, end, next_end - win, next_end)
                next_end += hop

    def _window(self, samples: np.ndarray, start: float, end: float, start_pos: int,
                end_pos: int) -> None:
        assert self.classifier is not None and self._recorder is not None
        t0 = time.perf_counter()
        _, dbfs = rms_dbfs(samples)
        self.windows += 1
        self.dbfs_last = round(dbfs, 2)
        scores = None
        vad = None
        if dbfs < self.gate_dbfs or not self.detection_enabled or not self.rules:
            self.gated += 1
        else:
            t1 = time.perf_counter()
            scores = self.classifier.classify(samples)
            self._infer_ms.append((time.perf_counter() - t1) * 1000.0)
            self._model_ms.append(self.classifier.last_model_ms)
            self.classified += 1
            if self._vad_track is not None:
                vad = self._vad_track.window(self._recorder, start_pos, end_pos)
        for step in self._lifecycle.step(Window(start, end, dbfs, scores, vad)):
            self._publish(step)
        self._pipeline_ms.append((time.perf_counter() - t0) * 1000.0)

    def _publish(self, step: Transition) -> None:
        recorder = self._recorder
        occ = step.occurrence
        audio = None
        clip = self.config.clip
        if recorder is not None and clip.enabled:
            if step.phase == "new":
                recorder.start(occ.track_id, occ.first_window_start)
                if clip.on_new:
                    audio = recorder.media(occ.track_id, until=step.at)
            elif step.phase == "end":
                audio = recorder.finish(occ.track_id, until=occ.last_heard_end)
        event = self._builder.build(step, audio)
        self.emit(event)
        if self.config.realtime or self.config.file is None:
            # Only meaningful when window times are wall-clock times (live or paced audio).
            self._latency_ms.append(max(0.0, (self._clock.time() - step.at) * 1000.0))
        logger.info("microphone %s: %s %s (%.2f, %.1f dBFS)", self.source_id, step.phase,
                    occ.rule.label.id, occ.confidence, occ.sound_level)

    def _flush(self) -> None:
        recorder = self._recorder
        at = recorder.end_time if recorder is not None else self._clock.time()
        for step in self._lifecycle.flush(at):
            self._publish(step)

    # ------------------------------------------------------------------ figures

    @property
    def overflows(self) -> int:
        """Capture blocks dropped because this worker fell behind (since start)."""
        source = self._source
        return self._overflows_before + (source.overflows if source is not None else 0)

    @property
    def driver_overruns(self) -> int:
        """Input lost before it reached us, as the driver or sound server reported it."""
        source = self._source
        return self._overruns_before + (source.driver_overruns if source is not None else 0)

    def stats(self) -> dict[str, Any]:
        """Figures for the stats topic."""
        return {
            "kind": self.kind,
            "state": self.tracker.state.value,
            "enabled": self.detection_enabled,
            "model": self.classifier.name if self.classifier else None,
            "windows": self.windows,
            "gated_windows": self.gated,
            "classified_windows": self.classified,
            "skipped_windows": self.skipped,
            "overflows": self.overflows,
            "driver_overruns": self.driver_overruns,
            "inference_ms_p50": _percentile(self._infer_ms, 50),
            "inference_ms_p95": _percentile(self._infer_ms, 95),
            "model_ms_p50": _percentile(self._model_ms, 50),
            "pipeline_ms_p50": _percentile(self._pipeline_ms, 50),
            "pipeline_ms_p95": _percentile(self._pipeline_ms, 95),
            "event_latency_ms_p50": _percentile(self._latency_ms, 50),
            "event_latency_ms_p95": _percentile(self._latency_ms, 95),
            "events_emitted": self.events_emitted,
            "open_sounds": len(self._lifecycle.open),
            "reconnects_last_hour": self.tracker.reconnects_last_hour(),
            "dbfs_last": self.dbfs_last,
        }


class _ListenError(Exception):
    """Labels a microphone names that its model does not have."""


def build_audio_worker(
    config: MicrophoneConfig,
    models: dict[str, AudioModelConfig],
    models_dir: Path,
    device_ref: DeviceRef,
    emit: EventSink,
    clock: Clock,
    status_listener: StatusListener | None = None,
    *,
    catalogue: LabelCatalogue | None = None,
    classifiers: dict[str, AudioClassifier] | None = None,
) -> AudioWorker:
    """The worker for one microphone, its model loaded (or shared through ``classifiers``).

    Never raises for a bad model, label file or VAD: the worker then starts in ``error`` with
    a message naming the microphone and the model, and the other sources keep working.
    """
    error: str | None = None
    classifier: AudioClassifier | None = None
    vad: SileroVad | None = None
    labels: list[LabelInfo] = []
    try:
        if catalogue is None:
            labels_dir = models_dir / "labels"
            catalogue = LabelCatalogue.load(labels_dir if labels_dir.is_dir() else None)
        model = models.get(config.model)
        if model is None:
            raise ModelLoadError(f"model {config.model!r} is not in models.audio "
                                 f"(have: {', '.join(sorted(models)) or 'none'})")
        labels = class_labels(config.model, model, models_dir, catalogue)
        if classifiers is not None and config.model in classifiers:
            classifier = classifiers[config.model]
        else:
            classifier = AudioClassifier(config.model, model, models_dir)
            if classifiers is not None:
                classifiers[config.model] = classifier
        if classifier.num_classes != len(labels):
            raise ModelLoadError(f"model {config.model}: {classifier.num_classes} outputs but "
                                 f"{len(labels)} labels ({model.labels})")
        problems = validate_listen(config, [info.id for info in labels])
        if problems:
            raise _ListenError("; ".join(problems))
        if config.vad.enabled:
            path = config.vad.model if config.vad.model.is_absolute() else (
                models_dir / config.vad.model)
            vad = SileroVad(path)
    except _ListenError as exc:
        error = str(exc)  # already names the microphone and the label
        classifier = None
    except (ModelLoadError, LabelCatalogueError) as exc:
        error = f"microphone {config.id}: {exc}"
        classifier = None
    return AudioWorker(config, classifier, labels, device_ref, emit, clock, status_listener,
                       vad=vad, startup_error=error)
