"""Convert a Darknet ``.cfg`` + ``.weights`` pair into an ONNX graph, without torch.

Supports the layers YOLOv3(-tiny) and their close relatives use: ``convolutional`` (batch
norm folded into the convolution; leaky, linear, relu or logistic activation), ``maxpool``
(including the size 2 / stride 1 pool that needs padding on the bottom and right only),
``route`` (with ``groups``/``group_id``), ``shortcut``, ``upsample`` and ``yolo``.

By default the YOLO heads are decoded inside the graph, so the model is self-contained and
has one output ``output`` ``[1, N, 5+C]`` in the Ultralytics YOLOv5 layout: box centre and
size in input pixels, sigmoid objectness, sigmoid class scores (Darknet's score is their
product). The detector then needs no anchors at run time, and the decode runs in
onnxruntime's kernels. ``decode=False`` keeps the raw head convolutions as outputs instead
(``[1, 3*(5+C), H, W]`` each), the ``yolov3`` adapter layout; tests use it to compare
against OpenCV's own Darknet loader layer by layer.

The input is ``images`` ``[1, 3, height, width]`` from the ``[net]`` section: RGB scaled to
0..1, letterboxed with 0.5 grey (127.5 in pixel units) as Darknet itself feeds the network;
the ``pad_value`` metadata property says so, and the detector reads it.

This module imports ``onnx`` (the ``models`` extra); the agent's run-time path never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

OPSET = 13
"""Old enough for onnxruntime 1.17 (JetPack 6), new enough for Resize and Slice inputs."""
IR_VERSION = 7
BN_EPSILON = 1e-6
"""Darknet's batch-norm epsilon (``sqrt(variance + .000001f)`` in its source)."""
LEAKY_SLOPE = 0.1


class DarknetError(ValueError):
    """The cfg uses something the converter does not support, or the weights do not fit."""


@dataclass
class Section:
    """One ``[type]`` block of a Darknet cfg."""

    kind: str
    options: dict[str, str] = field(default_factory=dict)
    line: int = 0

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise DarknetError(f"[{self.kind}] at line {self.line}: missing {key}=")
            return default
        return int(self.options[key])

    def get_float(self, key: str, default: float) -> float:
        return float(self.options.get(key, default))

    def get_ints(self, key: str) -> list[int]:
        value = self.options.get(key, "")
        return [int(v) for v in value.replace(" ", "").split(",") if v]

    def get_str(self, key: str, default: str) -> str:
        return self.options.get(key, default).strip()


def parse_cfg(text: str) -> list[Section]:
    """Sections in file order, ``[net]`` first; comments (``#``, ``;``) and blanks ignored."""
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise DarknetError(f"line {number}: malformed section header {raw.strip()!r}")
            sections.append(Section(line[1:-1].strip().lower(), line=number))
        elif "=" in line:
            if not sections:
                raise DarknetError(f"line {number}: option before any [section]")
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise DarknetError(f"line {number}: expected key=value, got {raw.strip()!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise DarknetError("the cfg must start with a [net] section")
    return sections


def read_weights(path: Path) -> npt.NDArray[np.float32]:
    """The float32 parameters of a ``.weights`` file, after its header."""
    data = path.read_bytes()
    if len(data) < 16:
        raise DarknetError(f"{path}: too short to be a Darknet weights file")
    major, minor, _revision = np.frombuffer(data[:12], dtype=np.int32)
    # The "images seen" counter grew from int32 to int64 in format 0.2.
    header = 20 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 16
    return np.frombuffer(data[header:], dtype=np.float32)


@dataclass
class _Tensor:
    name: str
    channels: int
    height: int
    width: int


@dataclass
class _Head:
    tensor: _Tensor
    anchors: list[tuple[float, float]]
    classes: int
    scale_xy: float


class _Builder:
    """Accumulates nodes and initializers; names stay unique and readable."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


class _Weights:
    """Sequential reader over the flat weights array."""

    def __init__(self, values: npt.NDArray[np.float32]) -> None:
        self.values = values
        self.offset = 0

    def take(self, count: int, what: str) -> npt.NDArray[np.float32]:
        end = self.offset + count
        if end > len(self.values):
            raise DarknetError(
                f"weights file ends early: {what} needs floats {self.offset}..{end}, "
                f"the file has {len(self.values)} (cfg and weights do not match?)"
            )
        chunk = self.values[self.offset:end]
        self.offset = end
        return chunk


def _activation(b: _Builder, x: str, kind: str, name: str, where: str) -> str:
    if kind == "linear":
        return x
    if kind == "leaky":
        return b.node("LeakyRelu", [x], name, alpha=LEAKY_SLOPE)
    if kind == "relu":
        return b.node("Relu", [x], name)
    if kind == "logistic":
        return b.node("Sigmoid", [x], name)
    raise DarknetError(f"{where}: activation={kind} is not supported")


def _conv(b: _Builder, s: Section, idx: int, x: _Tensor, w: _Weights) -> _Tensor:
    where = f"layer {idx} [convolutional] (cfg line {s.line})"
    filters = s.get_int("filters")
    size = s.get_int("size", 1)
    stride = s.get_int("stride", 1)
    groups = s.get_int("groups", 1)
    pad = size // 2 if s.get_int("pad", 0) else s.get_int("padding", 0)
    if x.channels % groups:
        raise DarknetError(f"{where}: {x.channels} channels do not split into {groups} groups")
    # Darknet's order: biases (beta), then scales (gamma), mean, variance if batch-normalised.
    bias = w.take(filters, where).copy()
    if s.get_int("batch_normalize", 0):
        gamma = w.take(filters, where)
        mean = w.take(filters, where)
        var = w.take(filters, where)
        factor = gamma / np.sqrt(var + BN_EPSILON)
    kernel = w.take(filters * (x.channels // groups) * size * size, where)
    kernel = kernel.reshape(filters, x.channels // groups, size, size).copy()
    if s.get_int("batch_normalize", 0):
        # Fold the frozen batch norm into the convolution: one op instead of two.
        kernel *= factor[:, None, None, None]
        bias = bias - mean * factor
    name = f"conv_{idx}"
    y = b.node(
        "Conv",
        [x.name, b.const(f"{name}.weight", kernel.astype(np.float32)),
         b.const(f"{name}.bias", bias.astype(np.float32))],
        name if s.get_str("activation", "logistic") == "linear" else f"{name}.pre",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[pad, pad, pad, pad],
        group=groups,
    )
    y = _activation(b, y, s.get_str("activation", "logistic"), name, where)
    height = (x.height + 2 * pad - size) // stride + 1
    width = (x.width + 2 * pad - size) // stride + 1
    return _Tensor(y, filters, height, width)


def _maxpool(b: _Builder, s: Section, idx: int, x: _Tensor) -> _Tensor:
    stride = s.get_int("stride", 1)
    size = s.get_int("size", stride)
    padding = s.get_int("padding", size - 1)
    height = (x.height + padding - size) // stride + 1
    width = (x.width + padding - size) // stride + 1
    # Darknet starts windows at -padding/2 and lets them run past the far edge; ONNX needs
    # that as explicit, possibly asymmetric pads (size 2 stride 1: 0 before, 1 after).
    begin = padding // 2
    end_h = max(0, (height - 1) * stride + size - x.height - begin)
    end_w = max(0, (width - 1) * stride + size - x.width - begin)
    y = b.node(
        "MaxPool", [x.name], f"pool_{idx}",
        kernel_shape=[size, size], strides=[stride, stride], pads=[begin, begin, end_h, end_w],
    )
    return _Tensor(y, x.channels, height, width)


def _upsample(b: _Builder, s: Section, idx: int, x: _Tensor) -> _Tensor:
    stride = s.get_int("stride", 2)
    scales = b.const(f"upsample_{idx}.scales", np.array([1, 1, stride, stride], np.float32))
    y = b.node(
        "Resize", [x.name, "", scales], f"upsample_{idx}",
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
    )
    return _Tensor(y, x.channels, x.height * stride, x.width * stride)


def _route(b: _Builder, s: Section, idx: int, layers: list[_Tensor]) -> _Tensor:
    where = f"layer {idx} [route] (cfg line {s.line})"
    sources = []
    for ref in s.get_ints("layers"):
        source = idx + ref if ref < 0 else ref
        if not 0 <= source < idx:
            raise DarknetError(f"{where}: layer {ref} does not exist")
        sources.append(layers[source])
    if not sources:
        raise DarknetError(f"{where}: no layers=")
    if len({(t.height, t.width) for t in sources}) != 1:
        raise DarknetError(f"{where}: routed layers differ in size")
    if len(sources) == 1:
        out = sources[0]
    else:
        name = b.node("Concat", [t.name for t in sources], f"route_{idx}", axis=1)
        out = _Tensor(name, sum(t.channels for t in sources), sources[0].height, sources[0].width)
    groups = s.get_int("groups", 1)
    if groups > 1:
        part = out.channels // groups
        start = s.get_int("group_id", 0) * part
        name = b.node(
            "Slice",
            [out.name, b.const(f"route_{idx}.starts", np.array([start], np.int64)),
             b.const(f"route_{idx}.ends", np.array([start + part], np.int64)),
             b.const(f"route_{idx}.axes", np.array([1], np.int64))],
            f"route_{idx}.group",
        )
        out = _Tensor(name, part, out.height, out.width)
    return out


def _shortcut(b: _Builder, s: Section, idx: int, layers: list[_Tensor], x: _Tensor) -> _Tensor:
    where = f"layer {idx} [shortcut] (cfg line {s.line})"
    ref = s.get_int("from")
    other = layers[idx + ref if ref < 0 else ref]
    if (other.channels, other.height, other.width) != (x.channels, x.height, x.width):
        raise DarknetError(f"{where}: shapes differ; only same-shape shortcuts are supported")
    y = b.node("Add", [x.name, other.name], f"shortcut_{idx}.pre")
    y = _activation(b, y, s.get_str("activation", "linear"), f"shortcut_{idx}", where)
    return _Tensor(y, x.channels, x.height, x.width)


def _yolo(s: Section, idx: int, x: _Tensor) -> _Head:
    where = f"layer {idx} [yolo] (cfg line {s.line})"
    flat = s.get_ints("anchors")
    pairs = [(float(flat[i]), float(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]
    mask = s.get_ints("mask") or list(range(len(pairs)))
    classes = s.get_int("classes", 80)
    if s.get_int("new_coords", 0):
        raise DarknetError(f"{where}: new_coords=1 (Scaled-YOLOv4) is not supported")
    if any(m >= len(pairs) for m in mask):
        raise DarknetError(f"{where}: mask {mask} refers past the {len(pairs)} anchors")
    if x.channels != len(mask) * (5 + classes):
        raise DarknetError(
            f"{where}: input has {x.channels} channels, expected "
            f"{len(mask)} x (5 + {classes}) = {len(mask) * (5 + classes)}"
        )
    return _Head(x, [pairs[m] for m in mask], classes, s.get_float("scale_x_y", 1.0))


def _decode_head(b: _Builder, head: _Head, k: int, net_w: int, net_h: int) -> str:
    """``[1, A*(5+C), H, W]`` raw logits -> ``[1, A*H*W, 5+C]`` boxes in input pixels."""
    t = head.tensor
    n_anchor, depth, cells = len(head.anchors), 5 + head.classes, t.height * t.width
    p = f"decode_{k}"

    def shape(name: str, dims: list[int]) -> str:
        return b.const(f"{p}.{name}", np.array(dims, np.int64))

    def part(name: str, start: int, end: int) -> str:
        return b.node(
            "Slice",
            [rows, shape(f"{name}.starts", [start]), shape(f"{name}.ends", [end]),
             shape(f"{name}.axes", [2])],
            f"{p}.{name}_logits",
        )

    x = b.node("Reshape", [t.name, shape("shape4", [1, n_anchor, depth, cells])], f"{p}.r4")
    x = b.node("Transpose", [x], f"{p}.t", perm=[0, 1, 3, 2])
    rows = b.node("Reshape", [x, shape("shape3", [1, n_anchor * cells, depth])], f"{p}.rows")
    # Grid offsets and anchor sizes for every row, in the (anchor, y, x) order of the rows.
    gy, gx = np.divmod(np.arange(cells), t.width)
    stride = np.array([net_w / t.width, net_h / t.height], np.float32)
    grid = np.tile(np.stack([gx, gy], axis=1), (n_anchor, 1)).astype(np.float32)
    anchors = np.repeat(np.asarray(head.anchors, np.float32), cells, axis=0)
    # Darknet: centre = (sigmoid(t) * s - (s - 1) / 2 + cell) * stride; size = exp(t) * anchor.
    sxy = head.scale_xy
    xy = b.node(
        "Mul", [b.node("Sigmoid", [part("xy", 0, 2)], f"{p}.xy_sig"),
                b.const(f"{p}.xy_scale", (sxy * stride)[None, None, :])],
        f"{p}.xy_scaled",
    )
    xy = b.node("Add", [xy, b.const(f"{p}.grid", ((grid - (sxy - 1) / 2) * stride)[None])],
                f"{p}.xy")
    wh = b.node("Mul", [b.node("Exp", [part("wh", 2, 4)], f"{p}.wh_exp"),
                        b.const(f"{p}.anchors", anchors[None])], f"{p}.wh")
    scores = b.node("Sigmoid", [part("scores", 4, depth)], f"{p}.scores")
    return b.node("Concat", [xy, wh, scores], f"{p}.out", axis=2)


def convert_darknet(cfg_path: Path, weights_path: Path, *, decode: bool = True) -> Any:
    """Build the ONNX ``ModelProto`` for a Darknet network; see the module docstring."""
    import onnx
    from onnx import TensorProto, helper

    sections = parse_cfg(cfg_path.read_text(encoding="utf-8"))
    net = sections[0]
    net_w, net_h, channels = net.get_int("width"), net.get_int("height"), net.get_int("channels", 3)
    weights = _Weights(read_weights(weights_path))
    b = _Builder()
    x = _Tensor("images", channels, net_h, net_w)
    layers: list[_Tensor] = []
    heads: list[_Head] = []
    for idx, s in enumerate(sections[1:]):
        if s.kind in ("convolutional", "conv"):
            x = _conv(b, s, idx, x, weights)
        elif s.kind in ("maxpool", "max"):
            x = _maxpool(b, s, idx, x)
        elif s.kind == "upsample":
            x = _upsample(b, s, idx, x)
        elif s.kind == "route":
            x = _route(b, s, idx, layers)
        elif s.kind == "shortcut":
            x = _shortcut(b, s, idx, layers, x)
        elif s.kind == "yolo":
            heads.append(_yolo(s, idx, x))
        else:
            raise DarknetError(f"layer {idx} [{s.kind}] (cfg line {s.line}) is not supported")
        layers.append(x)
    if not heads:
        raise DarknetError("the cfg has no [yolo] layer")
    if weights.offset != len(weights.values):
        raise DarknetError(
            f"the cfg uses {weights.offset} weights but the file has {len(weights.values)} "
            "(cfg and weights do not match?)"
        )
    if decode:
        classes = {h.classes for h in heads}
        if len(classes) != 1:
            raise DarknetError(f"[yolo] layers disagree on classes: {sorted(classes)}")
        (n_classes,) = classes
        decoded = [_decode_head(b, h, k, net_w, net_h) for k, h in enumerate(heads)]
        b.node("Concat", decoded, "output", axis=1)
        rows = sum(len(h.anchors) * h.tensor.height * h.tensor.width for h in heads)
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                 [1, rows, 5 + n_classes])]
        layout = "yolov5"
    else:
        outputs = []
        for h in heads:
            outputs.append(helper.make_tensor_value_info(
                h.tensor.name, TensorProto.FLOAT, [1, h.tensor.channels, h.tensor.height,
                                                   h.tensor.width]))
        layout = "yolov3"
    graph = helper.make_graph(
        b.nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, channels, net_h, net_w])],
        outputs,
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="edge-agent darknet converter",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {
        "layout": layout,
        "source": f"{cfg_path.name} + {weights_path.name}",
        "input": "RGB 0..1 letterboxed with 0.5 grey",
        "pad_value": "127.5",
    })
    onnx.checker.check_model(model)
    return model

