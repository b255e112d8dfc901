"""Object detection: frame -> letterbox -> onnxruntime -> layout adapter -> NMS -> frame boxes.

A ``Detector`` owns one ONNX session. At load time it runs the model once on a blank input:
that warms the session up, proves the file runs with our input, and gives the concrete output
shapes from which the layout (``type: auto``) and the class count are read, so a wrong model
fails at startup with a message naming it rather than on the first frame.
"""

from __future__ import annotations

import ast
import csv
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference.adapters import LAYOUTS, Layout, Shape, detect_layout, layout_classes, nms
from agent.inference.config import DetectorModelConfig
from agent.inference.detections import Detections
from agent.inference.letterbox import PAD_VALUE, letterbox, to_tensor, unletterbox_boxes
from agent.inference.session import InferenceSession, ModelLoadError, ModelRef
from agent.labels import LabelCatalogueError, load_label_file

logger = logging.getLogger(__name__)

DEFAULT_INPUT_SIZE = (640, 640)
"""(width, height) for models whose input shape is dynamic and whose config names none."""

_INPUT_DTYPES: dict[str, type[np.floating[Any]]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


def load_labels(spec: str, models_dir: Path, model_name: str) -> list[str]:
    """English label names by class index: the COCO catalogue or a one-name-a-line file."""
    if spec == "coco":
        csv_path = models_dir / "labels" / "coco.csv"
        if csv_path.is_file():
            with csv_path.open(encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
            if rows and "en" in rows[0]:
                if "index" in rows[0]:
                    rows.sort(key=lambda r: int(r["index"]))
                return [r["en"].strip() for r in rows]
        path = models_dir / "coco.names"
        if not path.is_file():
            raise ModelLoadError(
                f"model {model_name}: labels 'coco': neither {csv_path} (column en) nor {path} "
                "found (run `edge-agent models fetch`?)"
            )
    else:
        path = Path(spec) if Path(spec).is_absolute() else models_dir / spec
    # The one label reader (comments, blank lines, a BOM, indexed forms), as audio models use.
    try:
        return load_label_file(path)
    except LabelCatalogueError as exc:
        raise ModelLoadError(f"model {model_name}: {exc}") from exc


DARKNET_PAD_VALUE = 127.5
"""Darknet letterboxes with 0.5 on its 0..1 scale (``letterbox_image`` fills the canvas with
0.5 before placing the resized picture): 127.5 in pixel units."""


def pad_value_for(config: DetectorModelConfig, metadata: dict[str, str]) -> float:
    """The letterbox grey a model saw in training: configured, else Darknet's or YOLO's."""
    if config.pad_value is not None:
        return config.pad_value
    if "pad_value" in metadata:
        try:
            return float(metadata["pad_value"])
        except ValueError:
            pass
    # Models converted before the converter wrote pad_value name their .weights source.
    if metadata.get("source", "").endswith(".weights"):
        return DARKNET_PAD_VALUE
    return float(PAD_VALUE)


def _metadata_classes(metadata: dict[str, str]) -> int:
    """Classes named in an Ultralytics ``names`` metadata property; 0 when absent or unreadable."""
    text = metadata.get("names")
    if not text:
        return 0
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return 0
    return len(names) if isinstance(names, dict | list) else 0


def _input_geometry(
    name: str, session: InferenceSession, wanted: tuple[int, int] | None
) -> tuple[int, int]:
    """(width, height) to feed, checked against the model's input shape."""
    shape = session.input_shape()
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise ModelLoadError(
            f"model {name}: input {session.input_name} has shape {shape}; "
            "expected [1, 3, height, width] (NCHW, 3 channels)"
        )
    height, width = shape[2], shape[3]
    static = (width, height) if isinstance(width, int) and isinstance(height, int) else None
    if wanted is None:
        return static or DEFAULT_INPUT_SIZE
    if static is not None and wanted != static:
        raise ModelLoadError(
            f"model {name}: input_size {list(wanted)} but the model's input is fixed at "
            f"{static[0]}x{static[1]} (width x height)"
        )
    return wanted


@dataclass
class OpenedModel:
    """A vision model opened and probed once: what every task's model class starts from."""

    session: InferenceSession
    ref: ModelRef
    labels: list[str]
    input_size: tuple[int, int]
    tensor: npt.NDArray[np.floating[Any]]
    """One reusable input buffer: the tensor is filled in place every frame."""
    shapes: list[Shape]
    """The output shapes of a run on a blank input, which tell the layout."""


def open_vision_model(name: str, config: DetectorModelConfig, models_dir: Path) -> OpenedModel:
    """Open the session, read the labels and the input geometry, and run it once on a blank
    input; a file, input type or graph the agent cannot use is a ``ModelLoadError``."""
    session = InferenceSession(name, config, models_dir)
    labels = load_labels(config.labels, models_dir, name)
    input_size = _input_geometry(name, session, config.input_size)
    input_type = session.inputs[0].type
    if input_type not in _INPUT_DTYPES:
        raise ModelLoadError(
            f"model {name}: input type {input_type} is not supported (float or float16)"
        )
    width, height = input_size
    tensor = np.zeros((1, 3, height, width), dtype=_INPUT_DTYPES[input_type])
    try:
        probe = session.run({session.input_name: tensor})
    except Exception as exc:
        raise ModelLoadError(
            f"model {name}: a test run on a [1, 3, {height}, {width}] input failed: {exc}"
        ) from exc
    shapes: list[Shape] = [tuple(int(d) for d in o.shape) for o in probe]
    return OpenedModel(session, ModelRef(name=name, sha256=session.sha256), labels, input_size,
                       tensor, shapes)


class VisionModel:
    """What every vision model holds: its probed session, labels and input geometry, one
    input buffer behind a lock, and each thread's last ``session.run`` time."""

    def __init__(self, name: str, config: DetectorModelConfig, models_dir: Path) -> None:
        self.name = name
        self.config = config
        opened = open_vision_model(name, config, models_dir)
        self.session, self.model_ref, self.labels = opened.session, opened.ref, opened.labels
        self.input_size = opened.input_size
        self._tensor = opened.tensor
        self.shapes: list[Shape] = opened.shapes
        self._lock = threading.Lock()
        self._timing = threading.local()

    @property
    def last_inference_ms(self) -> float:
        """``session.run`` time of this thread's last call."""
        return float(getattr(self._timing, "ms", 0.0))


class Detector(VisionModel):
    """Runs one object-detection model on BGR frames; boxes come back in frame pixels.

    Not thread-safe (it reuses one input buffer): give each worker thread its own detector.
    """

    task = "detect"

    def __init__(self, name: str, config: DetectorModelConfig, models_dir: Path) -> None:
        super().__init__(name, config, models_dir)
        shapes = self.shapes
        width, height = self.input_size
        self.layout = self._choose_layout(shapes)
        self.pad_value = pad_value_for(config, self.session.metadata)
        self._warned_class_range = False
        logger.info(
            "model %s: %s layout, outputs %s, input %dx%d, %d labels, providers %s",
            name, self.layout.name, [list(s) for s in shapes], width, height,
            len(self.labels), self.session.providers,
        )

    def _choose_layout(self, shapes: list[Shape]) -> Layout:
        name = self.name
        described = ", ".join(str(list(s)) for s in shapes)
        wanted: str | None = self.config.type
        if wanted == "auto":
            wanted = detect_layout(shapes, len(self.labels))
        if wanted is None:
            supported = "; ".join(f"{k}: {v.description}" for k, v in LAYOUTS.items())
            raise ModelLoadError(
                f"model {name}: unsupported output layout {described}; supported: {supported}"
            )
        if wanted not in LAYOUTS:
            raise ModelLoadError(f"model {name}: type {wanted} is not a detection layout "
                                 "(load it with agent.inference.loader.load_vision_model)")
        layout = LAYOUTS[wanted]
        classes = layout_classes(layout.name, shapes)
        if classes is None:
            raise ModelLoadError(
                f"model {name}: outputs {described} do not fit type {layout.name} "
                f"({layout.description})"
            )
        told = f"outputs {described} predict"
        if classes == 0:
            # End-to-end outputs do not tell the class count; an Ultralytics export's
            # metadata does ({0: 'person', 1: 'bicycle', ...}).
            classes = _metadata_classes(self.session.metadata)
            told = "its metadata names"
        if classes and classes != len(self.labels):
            raise ModelLoadError(
                f"model {name}: read as {layout.name}, {told} {classes} "
                f"classes but labels {self.config.labels!r} has {len(self.labels)} names; "
                "set labels: to a file with one name per class (or type: if the layout is "
                "misread)"
            )
        return layout

    def _fill_padding(self, pad: tuple[int, int], inner_w: int, inner_h: int) -> None:
        """Set the letterbox border of the input tensor to the model's own grey.

        ``letterbox`` pads with a whole-pixel 114; Darknet's 127.5 is not a uint8 value, so
        the border is written here, in the tensor's units, on the few padded rows or columns.
        """
        if self.pad_value == PAD_VALUE:
            return
        value = self.pad_value * self.config.scale
        tensor = self._tensor[0]
        left, top = pad
        height, width = tensor.shape[1:]
        bottom = height - top - inner_h
        right = width - left - inner_w
        tensor[:, :top, :] = value
        tensor[:, height - bottom:, :] = value
        tensor[:, :, :left] = value
        tensor[:, :, width - right:] = value

    def detect(self, frame_bgr: npt.NDArray[np.uint8]) -> Detections:
        """Detections in ``frame_bgr`` ((H, W, 3) BGR uint8), boxes in frame pixels."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR frame, got shape {list(frame_bgr.shape)}")
        config = self.config
        image, box = letterbox(frame_bgr, self.input_size)
        # Cameras on the same model share this detector: the input buffer is one, so filling
        # and running it is serialised; the timing is kept per calling thread.
        with self._lock:
            to_tensor(image, rgb=config.color == "rgb", scale=config.scale, out=self._tensor)
            self._fill_padding(box.pad, round(box.orig_shape[1] * box.scale[0]),
                               round(box.orig_shape[0] * box.scale[1]))
            started = time.perf_counter()
            outputs = self.session.run({self.session.input_name: self._tensor})
        self._timing.ms = (time.perf_counter() - started) * 1000.0
        found = self.layout.decode(outputs, config.score_threshold, self.input_size)
        if self.layout.needs_nms:
            found = nms(found, config.iou_threshold)
        else:
            # End-to-end graphs need not sort; downstream expects the best first.
            found = found[np.argsort(-found.confidence, kind="stable")]
        xyxy = unletterbox_boxes(found.xyxy, box.scale, box.pad, box.orig_shape)
        # Boxes that lay wholly in the padding collapse to nothing when clipped: drop them,
        # and class ids the labels cannot name (only end-to-end models can produce them).
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        in_range = (found.class_id >= 0) & (found.class_id < len(self.labels))
        if not self._warned_class_range and not in_range.all():
            self._warned_class_range = True
            logger.warning(
                "model %s: class ids %s are outside the %d labels; dropping them",
                self.name, sorted(set(found.class_id[~in_range].tolist())), len(self.labels),
            )
        keep &= in_range
        return Detections(xyxy[keep], found.confidence[keep], found.class_id[keep])
