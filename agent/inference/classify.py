"""Image classification: a region of a frame -> class probabilities, best first.

The model has one output of ``C`` scores (``[1, C]``; ``[1, C, 1, 1]`` too). Whether they
are logits or probabilities is decided per call (``classify.activation: auto``): softmax is
applied when any score lies outside 0..1 or the scores do not sum to 1 within 0.02; scores
that already look like a distribution are kept as they are. Multi-label heads (independent
sigmoids, which need not sum to 1) should say ``activation: none``; a model whose logits
happen to fall inside 0..1 and sum to 1 should say ``softmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.inference.session import ModelLoadError
from agent.inference.tasks import OutputsMismatch, Shape, TaskModel, classify_classes

FloatArray = npt.NDArray[np.float32]

SUM_TOLERANCE = 0.02
"""Scores in 0..1 summing to 1 within this are taken as probabilities already."""


def to_probabilities(scores: FloatArray, activation: str = "auto") -> FloatArray:
    """``[C]`` scores as probabilities, by the rule in the module's docstring."""
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if activation == "none":
        return scores
    if activation == "auto":
        in_unit = bool(np.all((scores >= 0.0) & (scores <= 1.0)))
        if in_unit and abs(float(scores.sum()) - 1.0) <= SUM_TOLERANCE:
            return scores
    shifted = np.exp(scores - scores.max())
    return (shifted / shifted.sum()).astype(np.float32)


@dataclass(frozen=True)
class Classification:
    """One classified region: probabilities per class and the region in frame pixels."""

    probabilities: FloatArray
    region: FloatArray
    """``[4]`` xyxy in frame pixels of what was classified."""

    def top(self, k: int) -> list[tuple[int, float]]:
        """The ``k`` best (class id, probability), best first."""
        k = min(k, len(self.probabilities))
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(i), float(self.probabilities[i])) for i in order]

    @property
    def best(self) -> tuple[int, float]:
        """(class id, probability) of the most likely class."""
        i = int(np.argmax(self.probabilities))
        return i, float(self.probabilities[i])


def _fit(image: npt.NDArray[np.uint8], size: tuple[int, int], how: str
         ) -> npt.NDArray[np.uint8]:
    import cv2

    width, height = size
    h, w = image.shape[:2]
    if how == "letterbox":
        from agent.inference.letterbox import letterbox

        return letterbox(image, size)[0]
    if how == "center_crop":
        ratio = max(width / w, height / h)
        new_w, new_h = max(width, round(w * ratio)), max(height, round(h * ratio))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        left, top = (new_w - width) // 2, (new_h - height) // 2
        return np.ascontiguousarray(resized[top:top + height, left:left + width])
    return np.asarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR),
                      dtype=np.uint8)


class Classifier(TaskModel):
    """Runs one classification model on regions of BGR frames."""

    task = "classify"

    def _check(self, shapes: list[Shape]) -> None:
        classes = classify_classes(shapes)
        described = ", ".join(str(list(s)) for s in shapes)
        if classes is None:
            raise OutputsMismatch(f"model {self.name}: outputs {described} are not one "
                                 "[1, C] classification output")
        if classes != len(self.labels):
            raise ModelLoadError(
                f"model {self.name}: classifier outputs {classes} classes but labels "
                f"{self.config.labels!r} has {len(self.labels)} names; set labels: to a file "
                "with one name per class"
            )

    def classify(self, frame_bgr: npt.NDArray[np.uint8],
                 region: FloatArray | None = None) -> Classification:
        """Classify ``region`` (xyxy frame pixels; default the whole frame) of ``frame_bgr``.

        A region is clipped to the frame; one that is empty after clipping raises
        ``ValueError``.
        """
        h, w = frame_bgr.shape[:2]
        if region is None:
            box = np.array([0, 0, w, h], dtype=np.float32)
        else:
            box = np.asarray(region, dtype=np.float32).reshape(4).copy()
            np.clip(box[0::2], 0, w, out=box[0::2])
            np.clip(box[1::2], 0, h, out=box[1::2])
        x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
        x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"empty region {box.tolist()} in a {w}x{h} frame")
        options = self.config.classify
        image = _fit(frame_bgr[y1:y2, x1:x2], self.input_size, options.resize)
        outputs = self.run(image, options.mean, options.std)
        probabilities = to_probabilities(outputs[0], options.activation)
        return Classification(probabilities, box)
