"""Small ONNX graphs of each detector layout, with outputs the tests choose.

Each model takes an ``images`` input and returns constant tensors (plus zero times the input's
mean, so the input really flows through the graph). The ``*_output`` builders place known
boxes (model-input pixels, xyxy) into each family's raw layout, surrounded by background
candidates, a weaker duplicate of every box for NMS to remove, and a sub-threshold row.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.inference.adapters import YOLOV3_TINY_ANCHORS

OPSET = 13
OBJECTNESS = 0.99
"""Objectness of the known boxes in the YOLOv3/v5 layouts; class score = score / OBJECTNESS."""


def _mean_times_zero(nodes: list[onnx.NodeProto], dtype: int) -> str:
    nodes.append(helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0))
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["mean"], ["mean_f"], to=TensorProto.FLOAT))
        source = "mean_f"
    else:
        source = "mean"
    nodes.append(helper.make_node("Mul", [source, "zero"], ["nothing"]))
    return "nothing"


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Check and write ``model``; returns ``path``."""
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def constant_model(
    path: Path,
    outputs: Sequence[np.ndarray],
    input_shape: Sequence[int | str] = (1, 3, 640, 640),
    input_type: int = TensorProto.FLOAT,
) -> Path:
    """A model whose outputs are ``outputs`` (float32), whatever the input."""
    nodes: list[onnx.NodeProto] = []
    inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    nothing = _mean_times_zero(nodes, input_type)
    graph_outputs = []
    for k, value in enumerate(outputs):
        value = np.asarray(value, np.float32)
        inits.append(numpy_helper.from_array(value, f"value_{k}"))
        nodes.append(helper.make_node("Add", [f"value_{k}", nothing], [f"output_{k}"]))
        graph_outputs.append(
            helper.make_tensor_value_info(f"output_{k}", TensorProto.FLOAT, list(value.shape))
        )
    graph = helper.make_graph(
        nodes, "constant",
        [helper.make_tensor_value_info("images", input_type, list(input_shape))],
        graph_outputs, initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 7
    return save(model, path)


def channel_mean_model(path: Path, size: int = 64) -> Path:
    """End-to-end layout ``[1, 1, 6]``: one full-frame box whose score is the mean of input
    channel 0, so a test sees which colour channel and scale the detector fed."""
    box = numpy_helper.from_array(np.array([[[0, 0, size, size]]], np.float32), "box")
    cls = numpy_helper.from_array(np.zeros((1, 1, 1), np.float32), "cls")
    starts = numpy_helper.from_array(np.array([0], np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1], np.int64), "ends")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    shape = numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape")
    nodes = [
        helper.make_node("Slice", ["images", "starts", "ends", "axes"], ["c0"]),
        helper.make_node("ReduceMean", ["c0"], ["m"], keepdims=0),
        helper.make_node("Reshape", ["m", "shape"], ["score"]),
        helper.make_node("Concat", ["box", "score", "cls"], ["output"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "channel_mean",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 6])],
        initializer=[box, cls, starts, ends, axes, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 7
    return save(model, path)


def _cxcywh(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, np.float32)
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def _with_duplicates(
    xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The boxes, a 2 px shifted weaker copy of each (NMS fodder), one sub-threshold box."""
    xyxy = np.asarray(xyxy, np.float32)
    dup = xyxy + 2.0
    low = np.array([[10, 10, 50, 50]], np.float32)
    return (
        np.concatenate([xyxy, dup, low]),
        np.concatenate([class_id, class_id, [0]]).astype(np.int64),
        np.concatenate([score, np.asarray(score) * 0.8, [0.05]]).astype(np.float32),
    )


def yolov5_output(
    xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, num_classes: int, rows: int = 300
) -> np.ndarray:
    """``[1, rows, 5+C]``: objectness ``OBJECTNESS``, class score = score / ``OBJECTNESS``."""
    boxes, classes, scores = _with_duplicates(xyxy, class_id, score)
    out = np.zeros((rows, 5 + num_classes), np.float32)
    out[:, :4] = [100, 100, 20, 20]
    out[:, 4] = 0.01
    at = np.linspace(5, rows - 5, len(boxes)).astype(int)
    out[at, :4] = _cxcywh(boxes)
    out[at, 4] = OBJECTNESS
    out[at, 5 + classes] = scores / OBJECTNESS
    return out[None]


def yolov8_output(
    xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, num_classes: int, rows: int = 300
) -> np.ndarray:
    """``[1, 4+C, rows]``."""
    boxes, classes, scores = _with_duplicates(xyxy, class_id, score)
    out = np.zeros((rows, 4 + num_classes), np.float32)
    out[:, :4] = [100, 100, 20, 20]
    out[:, 4:] = 0.01
    at = np.linspace(5, rows - 5, len(boxes)).astype(int)
    out[at, :4] = _cxcywh(boxes)
    out[at, 4 + classes] = scores
    return out.T[None].copy()


def end2end_output(
    xyxy: np.ndarray, class_id: np.ndarray, score: np.ndarray, rows: int = 100
) -> np.ndarray:
    """``[1, rows, 6]``: the boxes, one sub-threshold row, then zero padding (as exported)."""
    out = np.zeros((rows, 6), np.float32)
    n = len(score)
    out[:n, :4] = xyxy
    out[:n, 4] = score
    out[:n, 5] = class_id
    out[n] = [10, 10, 50, 50, 0.05, 0]
    return out[None]


def _logit(p: np.ndarray | np.floating) -> np.ndarray:
    # A centre exactly on a cell edge would need an infinite logit; nudge it inside.
    p = np.clip(p, 1e-5, 1 - 1e-5)
    return np.log(p / (1 - p))


def yolov3_outputs(
    xyxy: np.ndarray,
    class_id: np.ndarray,
    score: np.ndarray,
    num_classes: int,
    input_size: tuple[int, int],
) -> list[np.ndarray]:
    """Two raw Darknet heads (strides 32 and 16, the tiny anchors) encoding the boxes.

    Each box goes into the coarse head with anchor 0, its weaker duplicate into the fine
    head with anchor 1; sigmoid(objectness) is ``OBJECTNESS``, sigmoid(class) = score / it.
    """
    width, height = input_size
    heads = []
    for stride in (32, 16):
        head = np.full((3, 5 + num_classes, height // stride, width // stride), -9.0, np.float32)
        heads.append(head)
    boxes, classes, scores = _with_duplicates(xyxy, class_id, score)
    n = len(score)
    for k, (box, cls, sc) in enumerate(zip(_cxcywh(boxes), classes, scores, strict=True)):
        head_idx, anchor = (0, 0) if k < n or k == 2 * n else (1, 1)
        stride = (32, 16)[head_idx]
        cx, cy, w, h = box
        gx, gy = int(cx // stride), int(cy // stride)
        aw, ah = YOLOV3_TINY_ANCHORS[head_idx][anchor]
        cell = heads[head_idx][anchor, :, gy, gx]
        cell[0] = _logit(np.float32(cx / stride - gx))
        cell[1] = _logit(np.float32(cy / stride - gy))
        cell[2] = np.log(w / aw)
        cell[3] = np.log(h / ah)
        cell[4] = _logit(np.float32(OBJECTNESS))
        cell[5 + cls] = _logit(np.float32(sc / OBJECTNESS))
    return [h.reshape(1, -1, h.shape[2], h.shape[3]) for h in heads]
