"""The vision worker end to end with the real default model on generated video."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.clock import SystemClock
from agent.events.schema import DeviceRef, Event
from agent.pipeline.vision import VisionWorker, build_vision_worker
from agent.sources.config import CameraConfig
from scripts.scenes import CrossingVideo, crossing_video
from tests.vision.conftest import MODEL_NAME, Collector

pytestmark = pytest.mark.slow


def camera(video: Path, **extra: object) -> CameraConfig:
    return CameraConfig(id=str(extra.pop("id", "street")), url=str(video), realtime=False,
                        objects={"track": ["motorbike", "person"]},
                        metadata={"line": "A"}, **extra)  # type: ignore[arg-type]


def run_to_end(worker: VisionWorker, collector: Collector, timeout: float = 120.0) -> None:
    worker.start()
    assert collector.wait_for(lambda c: bool({"ended", "error"} & set(c.states())), timeout)
    worker.stop()


def test_a_motorbike_crossing_is_one_new_and_one_end(
    crossing: CrossingVideo, detectors, catalogue, models_dir: Path, collector: Collector,
    device: DeviceRef, clock: SystemClock,
) -> None:
    worker = build_vision_worker(camera(crossing.path), detectors, models_dir, catalogue,
                                 device, collector.emit, clock, collector.status)
    run_to_end(worker, collector)
    events = collector.events
    phases = [e.phase for e in events]
    assert phases.count("new") == 1, phases
    assert phases.count("end") == 1, phases
    assert phases[0] == "new" and phases[-1] == "end"
    assert phases.count("update") <= 3
    assert {e.track_id for e in events} == {events[0].track_id}
    new, end = events[0], events[-1]
    assert new.label is not None and new.label.id == "motorbike"
    assert new.label.name.ko == "오토바이"
    assert new.source.kind == "camera" and new.source.id == "street"
    assert new.model is not None and new.model.name == MODEL_NAME
    assert new.use_case == "default" and new.metadata == {"line": "A"}
    assert new.object is not None and new.object.score >= new.object.threshold
    assert end.ended_at is not None and end.ended_at >= new.started_at  # type: ignore[operator]
    # The object is on screen from 2 s to 7 s of the file; event times follow the file.
    assert 0 < (end.ended_at - new.started_at).total_seconds() <= 5.2  # type: ignore[operator]
    images = {m.role: m for m in new.images}
    assert set(images) == {"input", "annotated"}
    for media in images.values():
        img = cv2.imdecode(np.frombuffer(base64.b64decode(media.data or ""), np.uint8),
                           cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)
    assert Event.model_validate_json(new.to_json()) == new

    stats = worker.stats()
    assert stats["state"] == "stopped"
    assert stats["events"] == {"new": 1, "update": phases.count("update"), "end": 1}
    assert stats["events_emitted"] == len(events)
    assert stats["inference_ms"]["p50"] > 0
    # 15 s at 5 fps; before the motorbike (2 s) and after its track ended (~2.8 s) nothing
    # moves and the detector does not run.
    # The fps cap decimates by timestamps, so a frame more or less is fine under load.
    assert 73 <= stats["frames_processed"] <= 77
    assert stats["motion_gated"] >= 15
    assert stats["frames_detected"] + stats["motion_gated"] == stats["frames_processed"]
    assert stats["active_tracks"] == 0

    snap = worker.snapshot_now()
    assert snap is not None and snap.kind == "snapshot" and snap.images[0].role == "input"


def test_a_bad_model_is_an_error_naming_it_while_other_cameras_work(
    tmp_path: Path, detectors, catalogue, models_dir: Path, device: DeviceRef,
    clock: SystemClock, caplog: pytest.LogCaptureFixture,
) -> None:
    from agent.inference.config import DetectorModelConfig

    caplog.set_level(logging.INFO)
    short = crossing_video(tmp_path / "short.avi", still_before_s=0.4, crossing_s=3.0,
                           still_after_s=0.0)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage" * 1000)
    models = {**detectors, "broken": DetectorModelConfig(path=corrupt),
              "missing": DetectorModelConfig(path=tmp_path / "nope.onnx")}
    cache: dict[str, object] = {}

    def build(cfg: CameraConfig, sink: Collector) -> VisionWorker:
        return build_vision_worker(cfg, models, models_dir, catalogue, device,  # type: ignore[arg-type]
                                   sink.emit, clock, sink.status, cache)  # type: ignore[arg-type]

    sinks = {name: Collector() for name in ("good", "broken", "missing", "unknown")}
    workers = {
        "good": build(camera(short.path, id="good"), sinks["good"]),
        "broken": build(camera(short.path, id="cam-broken", model="broken"), sinks["broken"]),
        "missing": build(camera(short.path, id="cam-missing", model="missing"),
                         sinks["missing"]),
        "unknown": build(camera(short.path, id="cam-unknown", model="nosuch"), sinks["unknown"]),
    }
    assert set(cache) == {MODEL_NAME}
    for w in workers.values():
        w.start()
    try:
        for name in ("broken", "missing", "unknown"):
            assert sinks[name].wait_for(lambda c: c.states() == ["error"], 10), name
        assert sinks["good"].wait_for(lambda c: "ended" in c.states(), 120)
    finally:
        for w in workers.values():
            w.stop()
    def detail(name: str) -> str:
        return str(sinks[name].statuses[0].detail)

    assert "model broken: cannot load" in detail("broken")
    assert "nope.onnx not found" in detail("missing")
    assert "'nosuch' is not in models.detectors" in detail("unknown")
    assert "camera cam-broken: model broken" in caplog.text
    assert all(not sinks[n].events for n in ("broken", "missing", "unknown"))
    assert next(e.phase for e in sinks["good"].events) == "new"
    assert [e.phase for e in sinks["good"].events].count("end") == 1


def test_an_unsupported_output_layout_is_an_error(
    tmp_path: Path, catalogue, models_dir: Path, device: DeviceRef, clock: SystemClock,
) -> None:
    import onnx
    from onnx import TensorProto, helper

    from agent.inference.config import DetectorModelConfig

    # A valid graph whose output [1, 1, 7] is no layout we know ([1, 7] is a classifier's).
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
         helper.make_node("Concat", ["pooled", "pooled", "pooled_1"], ["flat"], axis=1),
         helper.make_node("Reshape", ["flat", "shape"], ["out"]),
         helper.make_node("Slice", ["pooled", "s", "e", "a"], ["pooled_1"])],
        "odd",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 7])],
        [helper.make_tensor("s", TensorProto.INT64, [1], [0]),
         helper.make_tensor("e", TensorProto.INT64, [1], [1]),
         helper.make_tensor("a", TensorProto.INT64, [1], [1]),
         helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, 7])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    sink = Collector()
    worker = build_vision_worker(
        camera(tmp_path / "x.avi", model="odd"), {"odd": DetectorModelConfig(path=path)},
        models_dir, catalogue, device, sink.emit, clock, sink.status,
    )
    worker.start()
    try:
        assert sink.wait_for(lambda c: c.states() == ["error"], 10)
    finally:
        worker.stop()
    detail = str(sink.statuses[0].detail)
    assert "model odd" in detail and "unsupported output layout" in detail


def test_detection_can_be_switched_off(
    crossing: CrossingVideo, detector, catalogue, collector: Collector, device: DeviceRef,
    clock: SystemClock,
) -> None:
    worker = VisionWorker(camera(crossing.path), detector, catalogue, device, collector.emit,
                          clock, collector.status)
    worker.detection_enabled = False
    run_to_end(worker, collector)
    assert collector.events == []
    assert worker.frames_processed == 75 and worker.frames_detected == 0


def test_unknown_tracked_label_is_an_error(
    crossing: CrossingVideo, detector, catalogue, collector: Collector, device: DeviceRef,
    clock: SystemClock,
) -> None:
    cfg = CameraConfig(id="typo", url=str(crossing.path), objects={"track": ["persn"]})
    worker = VisionWorker(cfg, detector, catalogue, device, collector.emit, clock,
                          collector.status)
    worker.start()
    try:
        assert collector.wait_for(lambda c: c.states() == ["error"], 10)
    finally:
        worker.stop()
    assert "objects.track: unknown label 'persn'" in str(collector.statuses[0].detail)
