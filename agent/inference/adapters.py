"""Adapters from each detector family's raw outputs to ``Detections``, plus class-aware NMS.

Every adapter takes the session's outputs, the pre-NMS score floor and the model input size
(width, height), and returns boxes in model-input pixels (before unletterboxing) with the
best class of each candidate. Supported layouts (``N`` candidates, ``C`` classes):

- ``yolov3``: Darknet YOLO heads, two or three ``[1, 3*(5+C), H, W]`` raw convolution outputs
  (tx, ty, tw, th, objectness, classes per anchor) decoded here with the anchors and sigmoid.
  The default model from ``edge-agent models fetch`` does not use this: its converter
  (``agent.inference.darknet``) decodes the heads inside the graph into the ``yolov5`` layout.
- ``yolov5``: Ultralytics YOLOv5 ``[1, N, 5+C]`` (cx, cy, w, h, objectness, class scores).
- ``yolov8``: Ultralytics YOLOv8/v11 ``[1, 4+C, N]`` (cx, cy, w, h, class scores; no
  objectness); the transposed ``[1, N, 4+C]`` is accepted too.
- ``end2end``: NMS inside the graph, ``[1, K, 6]`` (x1, y1, x2, y2, score, class).

All coordinates are in model-input pixels, as Ultralytics exports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference.detections import Detections, FloatArray

# cv2 is imported inside nms, not here: agent.config imports the detector (for its model
# config), which imports this module, and an agent without cameras should not load OpenCV.

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
Adapter = Callable[[Sequence[np.ndarray], float, tuple[int, int]], Detections]

MAX_CANDIDATES = 10_000
"""Candidates kept (best scores first) before NMS, so a too-low threshold cannot stall NMS."""
MAX_DETECTIONS = 300
"""Detections kept after NMS, as Ultralytics does."""
END2END_MAX_ROWS = 1000
"""An ``[1, K, 6]`` output with more rows than this is a one-class YOLOv5, not end-to-end."""

YOLOV3_TINY_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((81, 82), (135, 169), (344, 319)),  # stride 32
    ((10, 14), (23, 27), (37, 58)),  # stride 16
)
YOLOV3_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((116, 90), (156, 198), (373, 326)),  # stride 32
    ((30, 61), (62, 45), (59, 119)),  # stride 16
    ((10, 13), (16, 30), (33, 23)),  # stride 8
)


def _as_float32(array: np.ndarray) -> npt.NDArray[np.float32]:
    return np.asarray(array, dtype=np.float32)


def cxcywh_to_xyxy(cxcywh: npt.NDArray[np.float32]) -> FloatArray:
    """``[N, 4]`` centre/size boxes to corner boxes."""
    half = cxcywh[:, 2:4] * 0.5
    return np.concatenate([cxcywh[:, 0:2] - half, cxcywh[:, 0:2] + half], axis=1).astype(
        np.float32, copy=False
    )


def _detections(xyxy: np.ndarray, score: np.ndarray, class_id: np.ndarray) -> Detections:
    return Detections(
        np.ascontiguousarray(xyxy, dtype=np.float32).reshape(-1, 4),
        np.ascontiguousarray(score, dtype=np.float32).reshape(-1),
        np.ascontiguousarray(class_id, dtype=np.int64).reshape(-1),
    )


def from_yolov5(
    outputs: Sequence[np.ndarray], score_threshold: float, input_size: tuple[int, int]
) -> Detections:
    """``[1, N, 5+C]``: score = objectness x best class score."""
    rows = _as_float32(outputs[0])
    rows = rows.reshape(-1, rows.shape[-1])
    # Objectness bounds the final score, so filtering on it first skips most rows cheaply.
    rows = rows[rows[:, 4] > score_threshold]
    classes = rows[:, 5:] * rows[:, 4:5]
    class_id = classes.argmax(axis=1)
    score = np.take_along_axis(classes, class_id[:, None], axis=1)[:, 0]
    keep = score > score_threshold
    return _detections(cxcywh_to_xyxy(rows[keep, :4]), score[keep], class_id[keep])


def from_yolov8(
    outputs: Sequence[np.ndarray], score_threshold: float, input_size: tuple[int, int]
) -> Detections:
    """``[1, 4+C, N]`` (or ``[1, N, 4+C]``): score = best class score."""
    out = _as_float32(outputs[0])
    out = out.reshape(out.shape[-2], out.shape[-1])
    # Candidates far outnumber channels, so the longer axis is the candidate axis.
    channels_first = out.shape[0] <= out.shape[1]
    table = out if channels_first else out.T
    classes = table[4:]
    best = classes.max(axis=0)
    keep = np.flatnonzero(best > score_threshold)
    class_id = classes[:, keep].argmax(axis=0)
    boxes = table[:4, keep].T
    return _detections(cxcywh_to_xyxy(boxes), best[keep], class_id)


def from_end2end(
    outputs: Sequence[np.ndarray], score_threshold: float, input_size: tuple[int, int]
) -> Detections:
    """``[1, K, 6]`` rows of x1, y1, x2, y2, score, class; NMS already done in the graph."""
    rows = _as_float32(outputs[0]).reshape(-1, 6)
    # Padding rows (score 0 or -1) of fixed-K exports fall under the threshold here.
    rows = rows[rows[:, 4] > score_threshold]
    return _detections(rows[:, :4], rows[:, 4], np.rint(rows[:, 5]))


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def from_yolov3(
    outputs: Sequence[np.ndarray],
    score_threshold: float,
    input_size: tuple[int, int],
    anchors: Sequence[Sequence[tuple[float, float]]] | None = None,
) -> Detections:
    """Raw Darknet heads ``[1, 3*(5+C), H, W]``; score = sigmoid(obj) x sigmoid(class).

    ``anchors``: per head, coarsest grid first, three (w, h) pairs in input pixels; by
    default the Darknet YOLOv3-tiny anchors for two heads and YOLOv3's for three.
    """
    heads = sorted((_as_float32(o) for o in outputs), key=lambda o: o.shape[-1] * o.shape[-2])
    if anchors is None:
        anchors = YOLOV3_TINY_ANCHORS if len(heads) == 2 else YOLOV3_ANCHORS
    width, height = input_size
    obj_floor = _logit(score_threshold)
    parts_xyxy, parts_score, parts_class = [], [], []
    for head, head_anchors in zip(heads, anchors, strict=True):
        _, channels, grid_h, grid_w = head.shape
        n_anchor = len(head_anchors)
        view = head.reshape(n_anchor, channels // n_anchor, grid_h * grid_w)
        # Compare logits, not probabilities: no sigmoid over the whole head.
        anchor_idx, pos = np.nonzero(view[:, 4, :] > obj_floor)
        cand = view[anchor_idx, :, pos]  # [K, 5+C]
        gy, gx = np.divmod(pos, grid_w)
        anchor_wh = np.asarray(head_anchors, dtype=np.float32)[anchor_idx]
        cx = (gx + _sigmoid(cand[:, 0])) * (width / grid_w)
        cy = (gy + _sigmoid(cand[:, 1])) * (height / grid_h)
        w = np.exp(cand[:, 2]) * anchor_wh[:, 0]
        h = np.exp(cand[:, 3]) * anchor_wh[:, 1]
        classes = _sigmoid(cand[:, 5:]) * _sigmoid(cand[:, 4:5])
        class_id = classes.argmax(axis=1)
        score = np.take_along_axis(classes, class_id[:, None], axis=1)[:, 0]
        keep = score > score_threshold
        parts_xyxy.append(
            cxcywh_to_xyxy(np.stack([cx, cy, w, h], axis=1).astype(np.float32)[keep])
        )
        parts_score.append(score[keep])
        parts_class.append(class_id[keep])
    return _detections(
        np.concatenate(parts_xyxy), np.concatenate(parts_score), np.concatenate(parts_class)
    )


def nms(
    detections: Detections, iou_threshold: float, max_detections: int = MAX_DETECTIONS
) -> Detections:
    """Class-aware non-maximum suppression; the result is sorted by confidence, best first."""
    import cv2

    if len(detections) == 0:
        return detections
    if len(detections) > MAX_CANDIDATES:
        top = np.argpartition(-detections.confidence, MAX_CANDIDATES)[:MAX_CANDIDATES]
        detections = detections[top]
    xywh = detections.xyxy.copy()
    xywh[:, 2:4] -= xywh[:, 0:2]
    # OpenCV's batched NMS offsets boxes per class in C++, which is what we want and fast.
    # Its stubs ask for sequences; arrays are accepted without a per-box conversion.
    batched_nms: Any = cv2.dnn.NMSBoxesBatched
    keep = np.asarray(
        batched_nms(xywh, detections.confidence, detections.class_id, 0.0, float(iou_threshold)),
        dtype=np.int64,
    ).reshape(-1)
    order = np.argsort(-detections.confidence[keep], kind="stable")
    return detections[keep[order][:max_detections]]


@dataclass(frozen=True)
class Layout:
    """One output layout: how to recognise it, how many classes it has, how to decode it."""

    name: str
    decode: Adapter
    needs_nms: bool
    description: str


def _yolov3_classes(shapes: Sequence[Shape]) -> int | None:
    if len(shapes) not in (2, 3) or any(len(s) != 4 or s[0] != 1 for s in shapes):
        return None
    channels = {s[1] for s in shapes}
    if len(channels) != 1:
        return None
    (c,) = channels
    if c % 3 or c // 3 < 6:
        return None
    return c // 3 - 5


def _single_3d(shapes: Sequence[Shape]) -> Shape | None:
    if len(shapes) == 1 and len(shapes[0]) == 3 and shapes[0][0] == 1:
        return shapes[0]
    return None


def layout_classes(layout: str, shapes: Sequence[Shape]) -> int | None:
    """Classes a model of ``layout`` with these output shapes predicts; ``None`` if it does
    not fit the layout, ``0`` if the layout does not tell (end-to-end)."""
    if layout == "yolov3":
        return _yolov3_classes(shapes)
    shape = _single_3d(shapes)
    if shape is None:
        return None
    _, a, b = shape
    if layout == "end2end":
        return 0 if b == 6 else None
    if layout == "yolov5":
        return b - 5 if a > b and b >= 6 else None
    if layout == "yolov8":
        short = min(a, b)
        return short - 4 if short >= 5 and a != b else None
    return None


def detect_layout(shapes: Sequence[Shape], num_labels: int | None = None) -> str | None:
    """Guess the layout from concrete output shapes; ``None`` when none fits.

    ``[1, N, 84]`` is ambiguous between YOLOv5 with 79 classes and a transposed YOLOv8 with
    80; the label count (when known) decides, else YOLOv5 wins as the usual export.
    """
    if _yolov3_classes(shapes) is not None:
        return "yolov3"
    shape = _single_3d(shapes)
    if shape is None:
        return None
    _, a, b = shape
    if b == 6 and (a <= END2END_MAX_ROWS or num_labels != 1):
        return "end2end"
    transposed_v8 = num_labels is not None and b == 4 + num_labels
    guess = "yolov8" if a < b or transposed_v8 else "yolov5"
    return guess if layout_classes(guess, shapes) else None


LAYOUTS: dict[str, Layout] = {
    "yolov3": Layout("yolov3", from_yolov3, True, "Darknet heads [1,3*(5+C),H,W] x2 or x3"),
    "yolov5": Layout("yolov5", from_yolov5, True, "[1,N,5+C] cx,cy,w,h,obj,classes"),
    "yolov8": Layout("yolov8", from_yolov8, True, "[1,4+C,N] cx,cy,w,h,classes"),
    "end2end": Layout("end2end", from_end2end, False, "[1,K,6] x1,y1,x2,y2,score,class"),
}
