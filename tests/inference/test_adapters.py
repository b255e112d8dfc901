"""Layout adapters, layout detection, NMS and the letterbox mapping, on plain arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.inference.adapters import (
    MAX_DETECTIONS,
    detect_layout,
    from_end2end,
    from_yolov3,
    from_yolov5,
    from_yolov8,
    layout_classes,
    nms,
)
from agent.inference.detections import Detections
from agent.inference.letterbox import (
    PAD_VALUE,
    letterbox,
    letterbox_geometry,
    to_tensor,
    unletterbox_boxes,
)
from scripts.harness import onnx_graphs as g

BOXES = np.array([[10, 20, 110, 220], [300, 40, 380, 90]], np.float32)
CLASSES = np.array([2, 0])
SCORES = np.array([0.7, 0.95], np.float32)


def _sorted(d: Detections) -> Detections:
    return d[np.argsort(-d.confidence)]


@pytest.mark.parametrize(
    ("adapter", "outputs"),
    [
        (from_yolov5, [g.yolov5_output(BOXES, CLASSES, SCORES, 3)]),
        (from_yolov8, [g.yolov8_output(BOXES, CLASSES, SCORES, 3)]),
        (from_yolov8, [g.yolov8_output(BOXES, CLASSES, SCORES, 3)[0].T[None]]),  # transposed
        (from_end2end, [g.end2end_output(BOXES, CLASSES, SCORES)]),
        (from_yolov3, g.yolov3_outputs(BOXES, CLASSES, SCORES, 3, (416, 416))),
    ],
)
def test_adapters_decode_known_boxes(adapter, outputs) -> None:  # type: ignore[no-untyped-def]
    found = nms(adapter(outputs, 0.25, (416, 416)), 0.45)
    order = np.argsort(-SCORES)
    np.testing.assert_allclose(found.xyxy, BOXES[order], atol=1e-3)
    np.testing.assert_array_equal(found.class_id, CLASSES[order])
    np.testing.assert_allclose(found.confidence, SCORES[order], atol=1e-5)


def test_score_threshold_is_a_floor_before_nms() -> None:
    out = [g.yolov5_output(BOXES, CLASSES, SCORES, 3)]
    # The 0.8 x 0.7 = 0.56 duplicate of the first box survives a 0.5 floor, not a 0.6 one.
    assert len(from_yolov5(out, 0.5, (416, 416))) == 4
    assert len(from_yolov5(out, 0.6, (416, 416))) == 3
    assert len(from_yolov5(out, 0.99, (416, 416))) == 0


def test_adapters_accept_float16_outputs() -> None:
    out = g.yolov8_output(BOXES, CLASSES, SCORES, 3).astype(np.float16)
    found = from_yolov8([out], 0.25, (416, 416))
    assert found.xyxy.dtype == np.float32
    assert len(nms(found, 0.45)) == 2


def test_nms_keeps_best_per_class_and_caps_the_count() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    xy = rng.uniform(0, 2000, (n, 2)).astype(np.float32)
    dets = Detections(
        np.concatenate([xy, xy + 10], axis=1), rng.uniform(0.3, 1, n).astype(np.float32),
        rng.integers(0, 3, n),
    )
    kept = nms(dets, 0.45)
    assert len(kept) == MAX_DETECTIONS
    assert (np.diff(kept.confidence) <= 0).all()
    assert len(nms(Detections.empty(), 0.45)) == 0


@pytest.mark.parametrize(
    ("shapes", "labels", "layout", "classes"),
    [
        ([(1, 255, 13, 13), (1, 255, 26, 26)], 80, "yolov3", 80),
        ([(1, 255, 13, 13), (1, 255, 26, 26), (1, 255, 52, 52)], 80, "yolov3", 80),
        ([(1, 25200, 85)], 80, "yolov5", 80),
        ([(1, 2535, 85)], None, "yolov5", 80),
        ([(1, 84, 8400)], 80, "yolov8", 80),
        ([(1, 8400, 84)], 80, "yolov8", 80),  # transposed export, told apart by the labels
        ([(1, 8400, 84)], 79, "yolov5", 79),
        ([(1, 300, 6)], 80, "end2end", 0),
        ([(1, 25200, 6)], 1, "yolov5", 1),  # a one-class YOLOv5, not end-to-end
        ([(1, 5, 8400)], 1, "yolov8", 1),
    ],
)
def test_layouts_are_detected_from_shapes(
    shapes: list[tuple[int, ...]], labels: int | None, layout: str, classes: int
) -> None:
    assert detect_layout(shapes, labels) == layout
    assert layout_classes(layout, shapes) == classes


@pytest.mark.parametrize(
    "shapes",
    [[(1, 10)], [(1, 84, 84)], [(2, 84, 8400)], [(1, 100, 4)], [(1, 84, 8400), (1, 32, 160)],
     [(1, 254, 13, 13), (1, 254, 26, 26)]],
)
def test_unknown_layouts_are_not_guessed(shapes: list[tuple[int, ...]]) -> None:
    assert detect_layout(shapes, 80) is None


def test_letterbox_centres_and_pads_grey() -> None:
    frame = np.full((360, 640, 3), 7, np.uint8)
    image, box = letterbox(frame, (416, 416))
    assert image.shape == (416, 416, 3)
    assert box.scale == (416 / 640, 234 / 360)
    assert box.pad == (0, 91)
    assert (image[:91] == PAD_VALUE).all()
    assert (image[91 + 234:] == PAD_VALUE).all()
    assert (image[91:91 + 234] == 7).all()


@settings(max_examples=200, deadline=None)
@given(
    frame_w=st.integers(1, 4000),
    frame_h=st.integers(1, 4000),
    input_w=st.integers(32, 1280),
    input_h=st.integers(32, 1280),
    corners=st.lists(st.floats(0, 1), min_size=4, max_size=4),
)
def test_unletterbox_inverts_the_letterbox_mapping(
    frame_w: int, frame_h: int, input_w: int, input_h: int, corners: list[float]
) -> None:
    box = letterbox_geometry((frame_h, frame_w, 3), (input_w, input_h))
    x1, x2 = sorted(corners[:2])
    y1, y2 = sorted(corners[2:])
    original = np.array([[x1 * frame_w, y1 * frame_h, x2 * frame_w, y2 * frame_h]], np.float32)
    sx, sy = box.scale
    px, py = box.pad
    in_input = original * np.array([sx, sy, sx, sy], np.float32) + np.array([px, py, px, py])
    assert (in_input >= -1e-3).all()
    assert (in_input[:, [0, 2]] <= input_w + 1e-3).all()
    assert (in_input[:, [1, 3]] <= input_h + 1e-3).all()
    back = unletterbox_boxes(in_input.astype(np.float32), box.scale, box.pad, box.orig_shape)
    np.testing.assert_allclose(back, original, atol=max(frame_w, frame_h) * 1e-5)


def test_unletterbox_clips_to_the_frame() -> None:
    back = unletterbox_boxes(np.array([[-50, -50, 900, 900]], np.float32), (1.0, 1.0), (0, 140),
                             (360, 640))
    np.testing.assert_array_equal(back, [[0, 0, 640, 360]])


def test_to_tensor_orders_channels_and_scales() -> None:
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 10, 20, 30  # B, G, R
    rgb = to_tensor(image)
    assert rgb.shape == (1, 3, 2, 3)
    assert rgb.dtype == np.float32
    np.testing.assert_allclose(rgb[0, :, 0, 0], np.array([30, 20, 10]) / 255, rtol=1e-6)
    bgr = to_tensor(image, rgb=False, scale=1.0)
    np.testing.assert_array_equal(bgr[0, :, 1, 2], [10, 20, 30])
    buffer = np.empty((1, 3, 2, 3), np.float16)
    assert to_tensor(image, out=buffer) is buffer
