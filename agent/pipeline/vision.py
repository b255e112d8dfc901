"""The vision worker: one camera through capture, motion gate, detector and object events.

Per frame (at most ``fps`` a second, the newest one when the detector is slower):

1. the motion gate compares it with the background;
2. the detector runs when something moved, or while tracked objects may still be moving
   (so they can end properly), or every ``motion.keepalive_s`` while only stationary objects
   are tracked (a parked car must not keep the CPU busy, but must still be seen to leave);
3. the object stage turns detections into ``new``/``update``/``end`` events, handed to the
   daemon's sink.

A model that cannot be loaded, a missing file or a dead stream are states on the camera's
status topic (``error``, ``reconnecting``), never exceptions that reach another camera.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.clock import Clock, utc_datetime
from agent.events.classification import ClassificationProcessor
from agent.events.media import jpeg_media
from agent.events.objects import EventContext, ObjectProcessor
from agent.events.schema import DeviceRef, Event, Label, LabelName, SourceRef
from agent.inference.motion import MotionGate
from agent.inference.session import ModelLoadError
from agent.pipeline.base import EventSink, Worker
from agent.pipeline.stages import (
    ClassifyStage,
    FrameClassifier,
    build_processor,
    load_classify_stage,
)
from agent.sources.base import SourceState, StatusListener
from agent.sources.camera import CameraCapture, Frame, RateMeter
from agent.sources.config import CameraConfig

if TYPE_CHECKING:
    from agent.inference.config import DetectorModelConfig
    from agent.labels import LabelCatalogue
    from agent.pipeline.stages import FrameModel

logger = logging.getLogger(__name__)

_READ_TIMEOUT_S = 0.5
"""How long the loop waits for a frame before it beats and looks around (stop, staleness)."""

_WINDOW = 300
"""Samples kept for the inference and latency percentiles."""


def labels_for(names: Sequence[str], catalogue: LabelCatalogue | None) -> list[Label]:
    """Catalogue labels (stable id, English and Korean names) for a model's class names."""
    if catalogue is None:
        from agent.labels import slugify

        return [Label(id=slugify(n), name=LabelName(en=n, ko=n)) for n in names]
    return [Label(id=info.id, name=LabelName(en=info.en, ko=info.ko))
            for info in catalogue.from_names(names)]


class _Percentiles:
    """The last ``_WINDOW`` samples of a duration, for p50/p95 in the stats."""

    def __init__(self) -> None:
        self._values: deque[float] = deque(maxlen=_WINDOW)

    def add(self, value: float) -> None:
        self._values.append(value)

    def summary(self) -> dict[str, float | None]:
        values = list(self._values)
        if not values:
            return {"p50": None, "p95": None}
        p50, p95 = np.percentile(np.asarray(values), [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


class VisionWorker(Worker):
    """One camera's worker thread (plus its capture thread).

    ``detector`` is None when the model could not be loaded; ``detector_error`` then says why
    and the camera reports ``error`` instead of running.
    """

    kind = "camera"

    def __init__(
        self,
        config: CameraConfig,
        detector: FrameModel | None,
        catalogue: LabelCatalogue | None,
        device: DeviceRef,
        emit: EventSink,
        clock: Clock,
        status_listener: StatusListener | None = None,
        *,
        detector_error: str | None = None,
        classify_stage: ClassifyStage | None = None,
    ) -> None:
        super().__init__(config.id, emit, clock, status_listener)
        self.config = config
        self.detector = detector
        self._error = detector_error if detector is None else None
        if detector is None and self._error is None:
            self._error = f"model {config.model}: no detector"
        self.source_ref = SourceRef(id=config.id, kind="camera", name=config.display_name,
                                    location=config.location)
        self._device = device
        self.processor: ObjectProcessor | ClassificationProcessor | None = None
        self.classify_stage = classify_stage
        if detector is not None:
            try:
                self.processor = build_processor(
                    detector, labels_for(detector.labels, catalogue),
                    EventContext(device, self.source_ref, detector.model_ref, config.use_case,
                                 dict(config.metadata)), config)
            except ValueError as exc:
                self._error = str(exc)
        self.capture = CameraCapture(config, self.tracker, clock)
        self.gate = MotionGate(config.motion, config.masks)
        self._last_frame: Frame | None = None
        self._epoch = 0
        self._last_detect_t = float("-inf")
        self.frames_processed = 0
        self.frames_detected = 0
        self.motion_gated = 0
        self._process_rate = RateMeter()
        self._detect_rate = RateMeter()
        self.inference_ms = _Percentiles()
        self.latency_ms = _Percentiles()
        self.overhead_ms = _Percentiles()
        self.event_latency_ms = _Percentiles()
        self.frame_timings: deque[tuple[float, float]] = deque(maxlen=_WINDOW)
        """(capture -> events emitted, inference) in ms per detector frame, newest last."""

    @property
    def name(self) -> str:
        return f"camera {self.config.id}"

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        if self._error is not None or self.processor is None or self.detector is None:
            detail = self._error or "not configured"
            logger.error("%s: %s", self.name, detail)
            self.tracker.set(SourceState.ERROR, detail)
            return
        processor = self.processor
        stale_after = self.config.tracking.max_disappeared / (self.config.fps or 5.0)
        self.capture.start()
        try:
            while not self._stop.is_set():
                self.beat()
                frame = self.capture.read(_READ_TIMEOUT_S)
                if frame is None:
                    if self.capture.finished.is_set():
                        return
                    last = self._last_frame
                    if (processor.tracking_anything and last is not None
                            and self._clock.monotonic() - last.captured > stale_after):
                        # No pictures for as long as an object may go unseen: whatever was
                        # there cannot be vouched for any more.
                        self._emit_all(processor.finish(self._wall_now()), None)
                    continue
                if not self._process(frame):
                    return
        finally:
            self.capture.stop()
            self._emit_all(processor.finish(self._wall_now()), None)

    def _wall_now(self) -> float:
        """Now, on the camera's timeline: a file read faster than real time has its own."""
        last = self._last_frame
        if last is not None and self.config.finite and not self.config.realtime:
            return last.wall
        return self._clock.time()

    def _process(self, frame: Frame) -> bool:
        """Handle one frame; False when the camera must stop (a model failure)."""
        assert self.processor is not None and self.detector is not None
        processor = self.processor
        self._last_frame = frame
        self.frames_processed += 1
        self._process_rate.tick(self._clock.monotonic())
        if not self.detection_enabled:
            if processor.tracking_anything:
                self._emit_all(processor.finish(frame.wall), frame)
            return True
        if self.capture.epoch != self._epoch:
            # A new connection may show a moved or re-exposed picture: learn it afresh.
            self._epoch = self.capture.epoch
            self.gate.reset()
        if self.config.motion.enabled:
            moved = self.gate.update(frame.image).motion
            if not moved and not self._detect_anyway(frame.t):
                self.motion_gated += 1
                return True
        try:
            dets = self.detector.detect(frame.image)
        except ModelLoadError as exc:
            self._fail(str(exc))
            return False
        except Exception as exc:  # onnxruntime errors are deterministic: do not spin on them
            self._fail(f"model {self.config.model} failed on a frame: {exc}")
            return False
        self._last_detect_t = frame.t
        self.frames_detected += 1
        self._detect_rate.tick(self._clock.monotonic())
        inference = self.detector.last_inference_ms
        self.inference_ms.add(inference)
        # Each model's result goes to the processor built for it (agent.pipeline.stages).
        events = processor.process(dets, frame.image, frame.t, frame.wall)  # type: ignore[arg-type]
        if self.classify_stage is not None:
            try:
                events += self.classify_stage.after_detection(frame.image, processor, frame.t,
                                                              frame.wall)
            except Exception as exc:  # as for the camera's own model: deterministic, stop
                self._fail(f"classifier {self.classify_stage.classifier.name} failed on a "
                           f"frame: {exc}")
                return False
        self._emit_all(events, frame)
        latency = (self._clock.monotonic() - frame.captured) * 1000.0
        self.latency_ms.add(latency)
        # What the pipeline adds to the model: decode, gate, pre/post-processing, tracking,
        # JPEG snapshots, the sink. Watching it separately tells a slow model from slow code.
        self.overhead_ms.add(max(0.0, latency - inference))
        self.frame_timings.append((latency, inference))
        return True

    def _detect_anyway(self, t: float) -> bool:
        """Without motion: run the detector for tracked objects that may still change."""
        processor = self.processor
        assert processor is not None
        if not processor.tracking_anything:
            return False
        if processor.busy:
            return True
        return t - self._last_detect_t >= self.config.motion.keepalive_s

    def _emit_all(self, events: list[Event], frame: Frame | None) -> None:
        for event in events:
            self.emit(event)
            if frame is not None:
                self.event_latency_ms.add((self._clock.monotonic() - frame.captured) * 1000.0)

    def _fail(self, detail: str) -> None:
        logger.error("%s: %s", self.name, detail)
        self.tracker.set(SourceState.ERROR, detail)

    def _close(self) -> None:
        self.capture.stop()

    # -- operations -------------------------------------------------------------------------

    def set_thresholds(self, changes: dict[str, Any]) -> dict[str, Any]:
        """The thresholds command: ``{"labels": {id: {"threshold", "min_score"}}}``."""
        if self.processor is None:
            raise ValueError(f"camera {self.source_id} is not running: {self._error}")
        return {"labels": self.processor.set_label_thresholds(changes.get("labels", {}))}

    def snapshot_now(self) -> Event | None:
        """A ``kind: snapshot`` event with the latest frame (and the objects tracked now).

        None before the first frame arrived.
        """
        frame = self._last_frame
        if frame is None:
            return None
        if self.classify_stage is not None and self.classify_stage.config.run == "request":
            return self.classify_stage.on_request(frame.image, frame.wall)
        snaps = self.config.snapshots
        predictions = self.processor.predictions() if self.processor is not None else []
        return Event(
            kind="snapshot",
            use_case=self.config.use_case,
            timestamp=utc_datetime(frame.wall),
            device=self._device,
            source=self.source_ref,
            model=self.detector.model_ref if self.detector is not None else None,
            predictions=predictions,
            images=[jpeg_media(frame.image, "input", snaps.quality, snaps.max_width)],
            metadata=dict(self.config.metadata),
        )

    def stats(self) -> dict[str, Any]:
        """Figures for the stats topic."""
        now = self._clock.monotonic()
        status = self.tracker.status
        capture = self.capture
        processor = self.processor
        return {
            "kind": self.kind,
            "state": status.state.value,
            "detail": status.detail,
            "type": self.config.camera_type,
            "url": self.config.display_url,
            "model": self.config.model,
            "enabled": self.detection_enabled,
            "capture_fps": round(capture.grab_rate.rate(now), 2),
            "process_fps": round(self._process_rate.rate(now), 2),
            "detect_fps": round(self._detect_rate.rate(now), 2),
            "frames_captured": capture.frames_grabbed,
            "frames_processed": self.frames_processed,
            "frames_skipped": capture.frames_dropped,
            "frames_detected": self.frames_detected,
            "motion_gated": self.motion_gated,
            "decode_errors": capture.decode_errors,
            "inference_ms": self.inference_ms.summary(),
            "latency_ms": self.latency_ms.summary(),
            "overhead_ms": self.overhead_ms.summary(),
            "reconnects": self.tracker.reconnects_total,
            "reconnects_last_hour": self.tracker.reconnects_last_hour(),
            "events_emitted": self.events_emitted,
            "events": dict(processor.events_by_phase) if processor else {},
            "active_tracks": processor.active_tracks if processor else 0,
        }


def build_vision_worker(
    config: CameraConfig,
    detectors: dict[str, DetectorModelConfig],
    models_dir: Path,
    catalogue: LabelCatalogue | None,
    device_ref: DeviceRef,
    emit: EventSink,
    clock: Clock,
    status_listener: StatusListener | None = None,
    detector_cache: dict[str, Any] | None = None,
) -> VisionWorker:
    """A worker for ``config``, its detector loaded (or taken from ``detector_cache``).

    Never raises for a bad model: the worker then reports ``error`` naming the model, and
    the other cameras are unaffected.
    """
    from agent.inference.loader import load_vision_model

    detector: Any = None
    error: str | None = None
    if config.model not in detectors:
        have = ", ".join(sorted(detectors)) or "none"
        error = f"model {config.model!r} is not in models.detectors (have: {have})"
    elif detector_cache is not None and config.model in detector_cache:
        detector = detector_cache[config.model]
    else:
        try:
            detector = load_vision_model(config.model, detectors[config.model], models_dir)
        except ModelLoadError as exc:
            error = str(exc)
        else:
            if detector_cache is not None:
                detector_cache[config.model] = detector
    stage: ClassifyStage | None = None
    if detector is not None:
        source = SourceRef(id=config.id, kind="camera", name=config.display_name,
                           location=config.location)
        context = EventContext(device_ref, source, detector.model_ref, config.use_case,
                               dict(config.metadata))
        try:
            stage = load_classify_stage(config, detector, detectors, models_dir, context,
                                        lambda names: labels_for(names, catalogue),
                                        detector_cache)
        except (ModelLoadError, ValueError) as exc:
            detector, error = None, str(exc)
        if detector is not None and getattr(detector, "task", "") == "classify":
            from agent.events.config import ClassifyConfig

            detector = FrameClassifier(detector, config.classify or ClassifyConfig())
    return VisionWorker(config, detector, catalogue, device_ref, emit, clock, status_listener,
                        detector_error=error, classify_stage=stage)
