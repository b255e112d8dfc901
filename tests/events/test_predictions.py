"""Classification holds, zone anchors and the wiring errors a user sees, without a broker."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.clock import SystemClock
from agent.events.classification import LabelHold, grow_box
from agent.events.config import ClassifyConfig
from agent.events.schema import DeviceRef
from agent.inference.config import DetectorModelConfig
from agent.pipeline.vision import build_vision_worker
from agent.sources.base import SourceState
from agent.sources.config import CameraConfig
from tests.inference import task_graphs as g

REPO = Path(__file__).resolve().parents[2]


def test_a_new_class_is_reported_once_it_holds() -> None:
    hold = LabelHold()
    feed = [(1, 0.9), (1, 0.9), (2, 0.9), (1, 0.9), (1, 0.9), (1, 0.9), (0, 0.4), (0, 0.45),
            (0, 0.9), (0, 0.9)]
    reported = [hold.update(c, p, hold=2, floor=0.5) for c, p in feed]
    # class 1 after two; the 2 interrupts nothing reported; 1 again is no change; the weak
    # 0s do not count; two confident 0s are a change.
    assert reported == [False, True, False, False, False, False, False, False, False, True]
    assert hold.reported == 0


def test_crop_must_be_an_ordered_fraction() -> None:
    assert ClassifyConfig(crop=(0.1, 0.2, 0.5, 0.9)).crop_pixels(200, 100) == pytest.approx(
        [20, 20, 100, 90])
    with pytest.raises(ValidationError, match="crop"):
        ClassifyConfig(crop=(0.5, 0.2, 0.1, 0.9))


def test_grow_box_is_clipped_to_the_frame() -> None:
    grown = grow_box(np.array([10, 10, 110, 60], np.float32), 0.2, 120, 200)
    assert grown.tolist() == pytest.approx([0, 0, 120, 70])


@pytest.fixture
def models(tmp_path: Path) -> dict[str, DetectorModelConfig]:
    shutil.copytree(REPO / "models" / "labels", tmp_path / "labels")
    (tmp_path / "seg.txt").write_text("\n".join(g.SEG_LABELS))
    (tmp_path / "cls.txt").write_text("\n".join(g.CLS_LABELS))
    g.segment_model(tmp_path / "seg.onnx")
    g.pose_model(tmp_path / "pose.onnx")
    g.classifier_model(tmp_path / "cls.onnx")
    return {
        "seg": DetectorModelConfig(path=tmp_path / "seg.onnx", labels="seg.txt"),
        "pose": DetectorModelConfig(path=tmp_path / "pose.onnx"),
        "cls": DetectorModelConfig(path=tmp_path / "cls.onnx", labels="cls.txt"),
    }


ZONE = {"coordinates": [[0, 0], [1, 0], [1, 1], [0, 1]]}


@pytest.mark.parametrize(("model", "extra", "message"), [
    ("seg", {"zones": {"z": {**ZONE, "anchor": "left_ankle"}}},
     "zones.z.anchor: 'left_ankle' is not box, outline or a keypoint name"),
    ("pose", {"zones": {"z": {**ZONE, "anchor": "outline"}}},
     "zones.z.anchor: 'outline' needs a segmentation model"),
    ("pose", {"zones": {"z": {**ZONE, "anchor": "tail"}}}, "keypoints: nose, left_eye"),
    ("seg", {"classify": {"model": "nope", "run": "objects"}},
     "classify.model 'nope' is not in models.detectors"),
    ("seg", {"classify": {"model": "pose", "run": "objects"}},
     "classify.model pose is not a classifier"),
    ("seg", {"classify": {"model": "cls", "run": "objects", "objects": ["cat"]}},
     "classify.objects ['cat'] are not labels of seg"),
    ("seg", {"classify": {"run": "frames"}}, "classify.model is required"),
    ("cls", {"classify": {"run": "objects"}}, "needs a detector as the camera's model"),
])
def test_a_camera_that_does_not_fit_its_models_reports_why(
    models: dict[str, DetectorModelConfig], tmp_path: Path, model: str,
    extra: dict[str, object], message: str,
) -> None:
    config = CameraConfig.model_validate({"id": "c", "url": str(tmp_path / "x.avi"),
                                          "model": model, **extra})
    worker = build_vision_worker(config, models, tmp_path, None, DeviceRef(id="d"),
                                 lambda e: None, SystemClock())
    worker.start()
    deadline = time.monotonic() + 10
    while worker.tracker.status.state is not SourceState.ERROR and time.monotonic() < deadline:
        time.sleep(0.02)
    status = worker.tracker.status
    worker.stop()
    assert status.state is SourceState.ERROR
    assert message in str(status.detail)


def test_a_classifier_camera_on_request_classifies_only_when_asked(
    models: dict[str, DetectorModelConfig], tmp_path: Path
) -> None:
    config = CameraConfig.model_validate({"id": "c", "url": str(tmp_path / "x.avi"),
                                          "model": "cls", "classify": {"run": "request"}})
    worker = build_vision_worker(config, models, tmp_path, None, DeviceRef(id="d"),
                                 lambda e: None, SystemClock())
    assert worker.detector is not None and worker.classify_stage is not None
    frame = np.zeros((120, 160, 3), np.uint8)
    assert worker.detector.detect(frame) is None  # frames are not classified
    event = worker.classify_stage.on_request(frame, 1_700_000_000.0)
    assert event.kind == "classification" and event.label is not None
    assert event.label.id == "scratched"
    assert [p.label.id for p in event.predictions] == ["scratched", "good", "dented"]
    assert event.predictions[0].box is not None and event.predictions[0].box.width == 160.0
