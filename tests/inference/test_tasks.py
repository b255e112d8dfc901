"""Classification, segmentation and pose models read from their outputs, with known answers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.inference.classify import Classifier, to_probabilities
from agent.inference.config import COCO_KEYPOINTS, DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.loader import load_vision_model
from agent.inference.pose import PoseEstimator
from agent.inference.segment import Segmenter
from agent.inference.session import ModelLoadError
from scripts.harness.onnx_graphs import constant_model
from tests.inference import task_graphs as g

REPO = Path(__file__).resolve().parents[2]
FRAMES = [(640, 480), (1280, 720), (480, 640), (333, 250)]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "models" / "labels", tmp_path / "labels")
    (tmp_path / "seg.txt").write_text("\n".join(g.SEG_LABELS))
    (tmp_path / "cls.txt").write_text("\n".join(g.CLS_LABELS))
    g.segment_model(tmp_path / "seg.onnx")
    g.segment_model(tmp_path / "seg_t.onnx", transposed=True)
    g.pose_model(tmp_path / "pose.onnx")
    g.classifier_model(tmp_path / "cls.onnx")
    return tmp_path


def _config(path: str, **kw: object) -> DetectorModelConfig:
    return DetectorModelConfig.model_validate({"path": path, **kw})


@pytest.mark.parametrize("name", ["seg.onnx", "seg_t.onnx"])
def test_segmentation_outlines_match_the_known_masks(models: Path, name: str) -> None:
    model = load_vision_model("seg", _config(name, labels="seg.txt"), models)
    assert isinstance(model, Segmenter)
    for wh in FRAMES:
        found = model.detect(np.zeros((wh[1], wh[0], 3), np.uint8))
        assert found.class_id.tolist() == [0, 1], wh  # duplicates removed by NMS
        assert found.confidence == pytest.approx(g.SEG_SCORES, abs=1e-5)
        for outline, area, expected_in in zip(found.outlines, found.mask_area,
                                              g.seg_expected_input(), strict=True):
            expected = g.to_frame(expected_in, wh)
            assert g.outline_error(outline, expected) <= 2.0, (wh, outline, expected)
            true_area = 0.5 * abs(np.dot(expected[:, 0], np.roll(expected[:, 1], 1))
                                  - np.dot(expected[:, 1], np.roll(expected[:, 0], 1)))
            perimeter = np.linalg.norm(expected - np.roll(expected, 1, axis=0), axis=1).sum()
            assert abs(area - true_area) <= perimeter, (wh, area, true_area)


def test_outline_is_bounded_to_max_points(models: Path) -> None:
    model = load_vision_model("seg", _config("seg.onnx", labels="seg.txt",
                                             segment={"max_points": 4}), models)
    found = model.detect(np.zeros((480, 640, 3), np.uint8))  # type: ignore[union-attr]
    assert all(1 <= len(o) <= 4 for o in found.outlines)


def test_pose_keypoints_within_a_pixel(models: Path) -> None:
    model = load_vision_model("pose", _config("pose.onnx"), models)
    assert isinstance(model, PoseEstimator)
    for wh in FRAMES:
        found = model.detect(np.zeros((wh[1], wh[0], 3), np.uint8))
        assert len(found) == 1 and found.class_id.tolist() == [0]
        assert found.keypoints is not None
        expected = g.pose_keypoints_input()
        xy = g.to_frame(expected[:, :2], wh)
        assert np.abs(found.keypoints[0, :, :2] - xy).max() <= 1.0, wh
        assert found.keypoints[0, :, 2] == pytest.approx(expected[:, 2], abs=1e-5)
        assert tuple(found.keypoint_names) == COCO_KEYPOINTS


def test_pose_with_wrong_keypoint_count_is_refused(models: Path) -> None:
    with pytest.raises(ModelLoadError, match="keypoints"):
        PoseEstimator("pose", _config("pose.onnx", type="pose",
                                      pose={"keypoints": ["a", "b"]}), models)


def test_classifier_softmaxes_logits_and_ranks(models: Path) -> None:
    model = load_vision_model("cls", _config("cls.onnx", labels="cls.txt"), models)
    assert isinstance(model, Classifier)
    result = model.classify(np.zeros((100, 300, 3), np.uint8), np.array([10, 10, 90, 60]))
    top = result.top(3)
    assert [c for c, _ in top] == [1, 0, 2]
    assert [p for _, p in top] == pytest.approx([0.9088, 0.0746, 0.0166], abs=2e-4)
    assert result.region.tolist() == [10, 10, 90, 60]


def test_probability_rule() -> None:
    probs = np.array([0.7, 0.2, 0.1], np.float32)
    assert to_probabilities(probs).tolist() == pytest.approx(probs.tolist())
    # In 0..1 but not summing to 1: logits (or scores) -> softmax by the auto rule.
    assert to_probabilities(np.array([0.9, 0.8, 0.1])).sum() == pytest.approx(1.0)
    assert to_probabilities(np.array([0.9, 0.8]), "none").tolist() == pytest.approx([0.9, 0.8])
    assert to_probabilities(np.array([2.0, -1.0])).tolist() == pytest.approx(
        [0.9526, 0.0474], abs=1e-4)


def test_detectors_still_load_as_detectors(models: Path, tmp_path: Path) -> None:
    table = np.zeros((1, 84, 100), np.float32)
    constant_model(tmp_path / "det.onnx", [table])
    assert isinstance(load_vision_model("det", _config("det.onnx"), models), Detector)


def test_a_model_no_task_fits_names_every_layout(models: Path, tmp_path: Path) -> None:
    constant_model(tmp_path / "odd.onnx", [np.zeros((1, 7, 9, 9), np.float32)])
    with pytest.raises(ModelLoadError, match="unsupported output layout") as err:
        load_vision_model("odd", _config("odd.onnx"), models)
    for layout in ("yolov8", "classify: one [1, C]", "segment:", "pose:"):
        assert layout in str(err.value)


def test_a_classifier_with_the_wrong_labels_says_so(models: Path, tmp_path: Path) -> None:
    constant_model(tmp_path / "c7.onnx", [np.zeros((1, 7), np.float32)])
    with pytest.raises(ModelLoadError, match=r"classifier outputs 7 classes but labels "
                       r"'cls\.txt' has 3 names"):
        load_vision_model("c7", _config("c7.onnx", labels="cls.txt"), models)


def test_check_config_models_loads_every_kind(models: Path, tmp_path: Path) -> None:
    from agent.config import AgentConfig
    from agent.model_check import check_models

    config = AgentConfig.model_validate({
        "device": {"id": "t"}, "outbox": {"path": str(tmp_path / "outbox")},
        "cameras": [{"id": "c", "url": str(tmp_path / "x.avi"), "model": "seg",
                     "classify": {"model": "cls7", "run": "objects"}}],
        "models": {"dir": str(models), "audio": {}, "detectors": {
            "seg": {"path": "seg.onnx", "labels": "seg.txt"},
            "pose": {"path": "pose.onnx"},
            "cls7": {"path": "cls.onnx", "labels": "seg.txt"},
        }},
    })
    # The camera's classifier is checked too: its 3 outputs do not fit 2 labels.
    assert check_models(config) == [
        "models.detectors.cls7: model cls7: classifier outputs 3 classes but labels 'seg.txt' "
        "has 2 names; set labels: to a file with one name per class"]
