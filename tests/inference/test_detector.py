"""The Detector end to end through real onnxruntime sessions on small graphs of each layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto

from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.session import ModelLoadError, file_sha256
from scripts.harness import onnx_graphs as g

REPO_LABELS = Path(__file__).resolve().parents[2] / "models" / "labels"
LABELS = ["cat", "dog", "car"]

# Expected boxes in pixels of a 640x360 frame: one per class, one touching the frame edge.
FRAME_W, FRAME_H = 640, 360
FRAME_BOXES = np.array(
    [[100.0, 50.0, 260.0, 300.0], [300.0, 120.0, 420.0, 200.0], [500.0, 200.0, 640.0, 360.0]],
    np.float32,
)
CLASSES = np.array([0, 1, 2])
SCORES = np.array([0.9, 0.8, 0.6], np.float32)


def _to_input(boxes: np.ndarray, size: int) -> np.ndarray:
    """Frame boxes -> letterboxed model-input boxes (square input of ``size``)."""
    ratio = size / FRAME_W
    new_h = round(FRAME_H * ratio)
    top = (size - new_h) // 2
    scale = np.array([ratio, new_h / FRAME_H] * 2, np.float32)
    return boxes * scale + np.array([0, top, 0, top], np.float32)


def _write_labels(models_dir: Path, names: list[str], file_name: str = "mine.names") -> str:
    (models_dir / file_name).write_text("\n".join(names) + "\n", encoding="utf-8")
    return file_name


def _frame() -> np.ndarray:
    return np.zeros((FRAME_H, FRAME_W, 3), np.uint8)


Builder = Callable[[np.ndarray, int], list[np.ndarray]]
LAYOUT_BUILDERS: dict[str, Builder] = {
    "yolov5": lambda boxes, size: [g.yolov5_output(boxes, CLASSES, SCORES, len(LABELS))],
    "yolov8": lambda boxes, size: [g.yolov8_output(boxes, CLASSES, SCORES, len(LABELS))],
    "end2end": lambda boxes, size: [g.end2end_output(boxes, CLASSES, SCORES)],
    "yolov3": lambda boxes, size: g.yolov3_outputs(
        boxes, CLASSES, SCORES, len(LABELS), (size, size)
    ),
}


@pytest.mark.parametrize("layout", list(LAYOUT_BUILDERS))
@pytest.mark.parametrize("declared", ["auto", "explicit"])
@pytest.mark.parametrize("size", [416, 320])
def test_known_boxes_come_back_in_frame_pixels(
    tmp_path: Path, layout: str, declared: str, size: int
) -> None:
    outputs = LAYOUT_BUILDERS[layout](_to_input(FRAME_BOXES, size), size)
    g.constant_model(tmp_path / "m.onnx", outputs, (1, 3, size, size))
    config = DetectorModelConfig(
        path=Path("m.onnx"),
        labels=_write_labels(tmp_path, LABELS),
        type=layout if declared == "explicit" else "auto",  # type: ignore[arg-type]
    )
    detector = Detector("test-model", config, tmp_path)
    assert detector.layout.name == layout
    assert detector.input_size == (size, size)

    found = detector.detect(_frame())

    # Duplicates were suppressed, the sub-threshold row dropped; best score first.
    assert len(found) == 3
    np.testing.assert_allclose(found.xyxy, FRAME_BOXES, atol=1.0)
    np.testing.assert_array_equal(found.class_id, CLASSES)
    np.testing.assert_allclose(found.confidence, SCORES, atol=1e-4)
    assert (found.tracker_id == -1).all()
    assert [detector.labels[c] for c in found.class_id] == LABELS
    assert detector.last_inference_ms >= 0.0
    assert detector.model_ref.name == "test-model"
    assert detector.model_ref.sha256 == file_sha256(tmp_path / "m.onnx")


def test_nms_is_class_aware(tmp_path: Path) -> None:
    # Two near-identical boxes of different classes both survive; a same-class twin does not.
    boxes = np.array([[100, 100, 200, 200], [101, 101, 201, 201], [102, 100, 202, 200]], np.float32)
    out = g.yolov8_output(boxes, np.array([0, 1, 0]), np.array([0.9, 0.8, 0.7]), 3)
    g.constant_model(tmp_path / "m.onnx", [out], (1, 3, 640, 640))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    found = Detector("m", config, tmp_path).detect(np.zeros((640, 640, 3), np.uint8))
    assert sorted(found.class_id.tolist()) == [0, 1]


def test_boxes_in_the_padding_are_dropped_and_edges_clipped(tmp_path: Path) -> None:
    # 640x360 in a 640x640 input leaves 140 px bands above and below the picture.
    boxes = np.array([[10, 5, 100, 120], [200, 100, 300, 600]], np.float32)
    out = g.end2end_output(boxes, np.array([0, 1]), np.array([0.9, 0.8]))
    g.constant_model(tmp_path / "m.onnx", [out], (1, 3, 640, 640))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    found = Detector("m", config, tmp_path).detect(_frame())
    assert found.class_id.tolist() == [1]
    np.testing.assert_allclose(found.xyxy, [[200, 0, 300, 360]], atol=1e-3)


def test_dynamic_input_defaults_to_640_and_takes_input_size(tmp_path: Path) -> None:
    boxes = _to_input(FRAME_BOXES, 640)
    out = g.end2end_output(boxes, CLASSES, SCORES)
    g.constant_model(tmp_path / "m.onnx", [out], ("batch", 3, "height", "width"))
    labels = _write_labels(tmp_path, LABELS)
    detector = Detector("m", DetectorModelConfig(path=Path("m.onnx"), labels=labels), tmp_path)
    assert detector.input_size == (640, 640)
    np.testing.assert_allclose(detector.detect(_frame()).xyxy, FRAME_BOXES, atol=1.0)
    sized = DetectorModelConfig(path=Path("m.onnx"), labels=labels, input_size=(320, 256))
    assert Detector("m", sized, tmp_path).input_size == (320, 256)


def test_input_size_conflicting_with_a_fixed_input_is_refused(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 416, 416))
    config = DetectorModelConfig(
        path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS), input_size=(640, 640)
    )
    with pytest.raises(ModelLoadError, match=r"model fixed-model: input_size \[640, 640\]"):
        Detector("fixed-model", config, tmp_path)


@pytest.mark.parametrize(
    ("color", "scale", "expected"),
    [("rgb", 1 / 255, None), ("bgr", 1 / 255, 1.0), ("bgr", 1.0, 255.0)],
)
def test_colour_order_and_scale_reach_the_model(
    tmp_path: Path, color: str, scale: float, expected: float | None
) -> None:
    g.channel_mean_model(tmp_path / "m.onnx", size=64)
    config = DetectorModelConfig(
        path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS),
        color=color, scale=scale,  # type: ignore[arg-type]
    )
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:, :, 0] = 255  # pure blue in BGR: channel 0 is 1.0 only when fed as BGR
    found = Detector("m", config, tmp_path).detect(frame)
    if expected is None:
        assert len(found) == 0
    else:
        np.testing.assert_allclose(found.confidence, [expected], rtol=1e-5)


def test_float16_input_models_run(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(_to_input(FRAME_BOXES, 320),
                                                            CLASSES, SCORES)],
                     (1, 3, 320, 320), input_type=TensorProto.FLOAT16)
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    found = Detector("m", config, tmp_path).detect(_frame())
    np.testing.assert_allclose(found.xyxy, FRAME_BOXES, atol=1.0)


def test_unsupported_layout_names_the_model_and_shapes(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [np.zeros((1, 10), np.float32)], (1, 3, 64, 64))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    with pytest.raises(ModelLoadError, match=r"model odd-one: unsupported output layout \[1, 10\]"):
        Detector("odd-one", config, tmp_path)


def test_declared_type_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 64, 64))
    config = DetectorModelConfig(
        path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS), type="yolov3"
    )
    with pytest.raises(ModelLoadError, match=r"model e2e: outputs \[1, 100, 6\] do not fit type"):
        Detector("e2e", config, tmp_path)


def test_label_count_must_match_the_model(tmp_path: Path) -> None:
    out = g.yolov8_output(FRAME_BOXES, CLASSES, SCORES, 3)
    g.constant_model(tmp_path / "m.onnx", [out], (1, 3, 64, 64))
    config = DetectorModelConfig(
        path=Path("m.onnx"), labels=_write_labels(tmp_path, ["a", "b", "c", "d"])
    )
    with pytest.raises(ModelLoadError, match=r"model v8: .* predict 3 classes but labels"):
        Detector("v8", config, tmp_path)


def test_missing_file_names_the_model(tmp_path: Path) -> None:
    config = DetectorModelConfig(path=Path("absent.onnx"), labels=_write_labels(tmp_path, LABELS))
    with pytest.raises(ModelLoadError, match=r"model front-door: .*absent\.onnx not found"):
        Detector("front-door", config, tmp_path)


def test_corrupt_file_names_the_model(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(np.random.default_rng(7).bytes(4096))
    config = DetectorModelConfig(path=Path("bad.onnx"), labels=_write_labels(tmp_path, LABELS))
    with pytest.raises(ModelLoadError, match="model broken: cannot load"):
        Detector("broken", config, tmp_path)


def test_missing_label_file_names_the_model(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 64, 64))
    config = DetectorModelConfig(path=Path("m.onnx"), labels="nope.txt")
    with pytest.raises(ModelLoadError, match=r"model m: label file .*nope\.txt: cannot read it"):
        Detector("m", config, tmp_path)


def test_coco_labels_come_from_the_catalogue_then_coco_names(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 64, 64))
    config = DetectorModelConfig(path=Path("m.onnx"))
    with pytest.raises(ModelLoadError, match="model m: labels 'coco'"):
        Detector("m", config, tmp_path)

    (tmp_path / "coco.names").write_text("person\nbicycle\n", encoding="utf-8")
    assert Detector("m", config, tmp_path).labels == ["person", "bicycle"]

    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "coco.csv").write_bytes((REPO_LABELS / "coco.csv").read_bytes())
    labels = Detector("m", config, tmp_path).labels
    assert len(labels) == 80
    assert labels[0] == "person"
    assert labels[3] == "motorbike"


def test_frames_must_be_bgr(tmp_path: Path) -> None:
    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 64, 64))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    detector = Detector("m", config, tmp_path)
    with pytest.raises(ValueError, match="BGR"):
        detector.detect(np.zeros((64, 64), np.uint8))


def test_config_forbids_unknown_keys() -> None:
    with pytest.raises(ValueError, match="extra"):
        DetectorModelConfig(path=Path("m.onnx"), treshold=0.5)  # type: ignore[call-arg]


def test_end_to_end_results_come_best_first(tmp_path: Path) -> None:
    boxes = _to_input(FRAME_BOXES, 640)
    out = g.end2end_output(boxes, CLASSES, np.array([0.3, 0.9, 0.6], np.float32))
    g.constant_model(tmp_path / "m.onnx", [out], (1, 3, 640, 640))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    found = Detector("m", config, tmp_path).detect(_frame())
    np.testing.assert_allclose(found.confidence, [0.9, 0.6, 0.3], atol=1e-6)
    np.testing.assert_array_equal(found.class_id, [1, 2, 0])


# -- one label reader for every layout ------------------------------------------------------------


COMMENTED_LABELS = "\ufeff# classes of my model\n\n0: cat\n1: 'dog'  \n\n# vehicles\n2: car\n"


@pytest.mark.parametrize("layout", ["yolov5", "yolov8", "end2end"])
def test_commented_bom_label_file_gives_the_right_names(tmp_path: Path, layout: str) -> None:
    outputs = LAYOUT_BUILDERS[layout](_to_input(FRAME_BOXES, 416), 416)
    g.constant_model(tmp_path / "m.onnx", outputs, (1, 3, 416, 416))
    (tmp_path / "mine.yaml").write_text(COMMENTED_LABELS, encoding="utf-8")
    detector = Detector("m", DetectorModelConfig(path=Path("m.onnx"), labels="mine.yaml"),
                        tmp_path)
    assert detector.labels == LABELS
    found = detector.detect(_frame())
    assert [detector.labels[c] for c in found.class_id] == LABELS
    # The plain form with a BOM and comments reads the same.
    (tmp_path / "plain.names").write_bytes(
        "\ufeff# header\ncat\n\ndog\n# comment\ncar\n".encode())
    plain = Detector("m", DetectorModelConfig(path=Path("m.onnx"), labels="plain.names"),
                     tmp_path)
    assert plain.labels == LABELS


@pytest.mark.parametrize("layout", ["yolov3", "yolov5", "yolov8"])
def test_a_label_file_of_the_wrong_length_is_refused_for_every_layout_that_tells(
    tmp_path: Path, layout: str
) -> None:
    outputs = LAYOUT_BUILDERS[layout](_to_input(FRAME_BOXES, 416), 416)
    g.constant_model(tmp_path / "m.onnx", outputs, (1, 3, 416, 416))
    config = DetectorModelConfig(path=Path("m.onnx"), type=layout,  # type: ignore[arg-type]
                                 labels=_write_labels(tmp_path, ["cat", "dog"]))
    with pytest.raises(ModelLoadError, match=r"predict 3 classes but labels 'mine.names' has 2"):
        Detector("m", config, tmp_path)


def test_end_to_end_label_count_comes_from_ultralytics_metadata(tmp_path: Path) -> None:
    import onnx

    g.constant_model(tmp_path / "m.onnx", [g.end2end_output(FRAME_BOXES, CLASSES, SCORES)],
                     (1, 3, 64, 64))
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.helper.set_model_props(model, {"names": "{0: 'cat', 1: 'dog', 2: 'car', 3: 'bus'}"})
    onnx.save(model, str(tmp_path / "m.onnx"))
    config = DetectorModelConfig(path=Path("m.onnx"), labels=_write_labels(tmp_path, LABELS))
    with pytest.raises(ModelLoadError, match="its metadata names 4 classes but labels"):
        Detector("m", config, tmp_path)
