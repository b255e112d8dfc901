"""Models that do more than boxes: classification, instance segmentation and keypoints.

A model in ``models.detectors`` is read as one of four tasks. ``type:`` names it
(``classify``, ``segment``, ``pose``, or a detection layout); with ``type: auto`` the task is
read from the model, as detection layouts are:

- one output of ``C`` values per image (``[1, C]``, ``[1, C, 1, 1]``): **classify**;
- two outputs, ``[1, 4+C+M, N]`` and prototypes ``[1, M, H/4, W/4]``: **segment**;
- one ``[1, 4+C+K*3, N]`` output whose channels fit the labels plus ``K`` keypoints
  (``pose.keypoints``, 17 COCO names by default) but not the labels alone: **pose** (a
  one-class pose model may keep ``labels: coco``: its class is COCO's first, person);
- anything else: a detection layout (``agent.inference.adapters``).

``agent.inference.loader.load_vision_model`` returns a ``Detector`` for detection and the
task's own class otherwise; every one has ``name``, ``labels``, ``model_ref``, ``task`` and
``last_inference_ms``. Each task's options (``classify:``, ``segment:``, ``pose:`` under a
model's entry) are in ``agent.inference.config``, so the detector's config stays one class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from agent.inference.config import DetectorModelConfig
from agent.inference.detector import VisionModel
from agent.inference.session import ModelLoadError

logger = logging.getLogger(__name__)

Task = Literal["detect", "classify", "segment", "pose"]
Shape = tuple[int, ...]


class OutputsMismatch(ModelLoadError):
    """A model's outputs do not have the shape of the task it was opened as."""


TASK_LAYOUTS = ("classify: one [1, C] output; segment: [1, 4+C+M, N] and prototypes "
                "[1, M, H/4, W/4]; pose: [1, 4+C+K*3, N] (K = pose.keypoints)")


# -- the loaded model ------------------------------------------------------------------------


class TaskModel(VisionModel):
    """An ONNX model loaded and probed once: session, labels, input geometry, output shapes.

    The base of ``Classifier``, ``Segmenter`` and ``PoseEstimator``; ``_check(shapes)`` in
    each raises ``ModelLoadError`` when the outputs do not fit its task. Not thread-safe for
    the input buffer, so ``run`` serialises callers (cameras may share one model).
    """

    task: Task = "detect"

    def __init__(self, name: str, config: DetectorModelConfig, models_dir: Path) -> None:
        super().__init__(name, config, models_dir)
        width, height = self.input_size
        self._check(self.shapes)
        logger.info("model %s: %s, outputs %s, input %dx%d, %d labels, providers %s",
                    name, self.task, [list(s) for s in self.shapes], width, height,
                    len(self.labels), self.session.providers)

    def _check(self, shapes: list[Shape]) -> None:
        raise NotImplementedError

    def run(self, image_bgr: npt.NDArray[np.uint8],
            mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> list[np.ndarray]:
        """Run on an image already sized to the input (H, W, 3 BGR); every output."""
        from agent.inference.letterbox import to_tensor

        config = self.config
        with self._lock:
            tensor = to_tensor(image_bgr, rgb=config.color == "rgb", scale=config.scale,
                               out=self._tensor)
            if mean is not None and std is not None and (any(mean) or any(s != 1 for s in std)):
                m = np.asarray(mean, dtype=tensor.dtype).reshape(1, 3, 1, 1)
                s = np.asarray(std, dtype=tensor.dtype).reshape(1, 3, 1, 1)
                np.subtract(tensor, m, out=tensor)
                np.divide(tensor, s, out=tensor)
            started = time.perf_counter()
            outputs = self.session.run({self.session.input_name: tensor})
        self._timing.ms = (time.perf_counter() - started) * 1000.0
        return outputs


def classify_classes(shapes: Sequence[Shape]) -> int | None:
    """Classes of a ``[1, C]`` (or ``[1, C, 1, 1]``) classifier output; None otherwise."""
    if len(shapes) != 1:
        return None
    shape = shapes[0]
    if len(shape) < 2 or shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] < 2:
        return None
    return shape[1]


def segment_geometry(shapes: Sequence[Shape]) -> tuple[int, int] | None:
    """``(channels, M)`` of an Ultralytics segmentation export's two outputs; None otherwise."""
    if len(shapes) != 2:
        return None
    table = next((s for s in shapes if len(s) == 3), None)
    protos = next((s for s in shapes if len(s) == 4), None)
    if table is None or protos is None or table[0] != 1 or protos[0] != 1:
        return None
    channels = min(table[1], table[2])
    masks = protos[1]
    return (channels, masks) if channels > 4 + masks else None


def pose_classes(shapes: Sequence[Shape], keypoints: int) -> int | None:
    """Classes of a ``[1, 4+C+K*3, N]`` pose output with ``keypoints`` = K; None otherwise."""
    if len(shapes) != 1 or len(shapes[0]) != 3 or shapes[0][0] != 1:
        return None
    _, a, b = shapes[0]
    classes = min(a, b) - 4 - 3 * keypoints
    return classes if classes >= 1 and a != b else None


