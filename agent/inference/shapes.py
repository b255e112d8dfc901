"""Detections that carry a shape beyond the box: a segmentation outline or keypoints.

``ShapeDetections`` is a ``Detections`` (so filters, tracking and zones work on it
unchanged) with, per detection, an outline polygon and the mask's area (segmentation) or
``[K, 3]`` keypoints (pose), all in original-frame pixels. Never a full-size mask: outlines
are bounded to ``segment.max_points`` points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from agent.inference.detections import Detections, FloatArray


def _empty_floats() -> FloatArray:
    return np.zeros((0,), dtype=np.float32)


@dataclass(frozen=True)
class ShapeDetections(Detections):
    """Detections with outlines (``[P, 2]`` each) and mask areas, or keypoints ``[N, K, 3]``.

    Exactly one of the two is filled, by the model's task; ``keypoint_names`` name the
    keypoints' second axis.
    """

    outlines: tuple[FloatArray, ...] = ()
    mask_area: FloatArray = field(default_factory=_empty_floats)
    keypoints: FloatArray | None = None
    keypoint_names: Sequence[str] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.confidence)
        if self.outlines and len(self.outlines) != n:
            raise ValueError(f"outlines must be {n}, got {len(self.outlines)}")
        if self.keypoints is not None and (self.keypoints.ndim != 3 or len(self.keypoints) != n
                                           or self.keypoints.shape[2] != 3):
            raise ValueError(f"keypoints must be [{n}, K, 3], got {list(self.keypoints.shape)}")

    @property
    def task(self) -> str:
        """``segment`` or ``pose``."""
        return "pose" if self.keypoints is not None else "segment"


def unletterbox_points(
    points: npt.NDArray[np.float32], scale: tuple[float, float], pad: tuple[int, int],
    orig_shape: tuple[int, int],
) -> npt.NDArray[np.float32]:
    """``[..., 2]`` points from model-input pixels back to the frame, clipped to it."""
    out = np.asarray(points, dtype=np.float32).copy()
    out[..., 0] = (out[..., 0] - pad[0]) / scale[0]
    out[..., 1] = (out[..., 1] - pad[1]) / scale[1]
    height, width = orig_shape
    np.clip(out[..., 0], 0, width, out=out[..., 0])
    np.clip(out[..., 1], 0, height, out=out[..., 1])
    return out


def channels_first(output: np.ndarray) -> npt.NDArray[np.float32]:
    """An Ultralytics ``[1, 4+..., N]`` (or transposed ``[1, N, 4+...]``) output as
    ``[channels, N]``: candidates far outnumber channels, so the longer axis is theirs."""
    out = np.asarray(output, dtype=np.float32)
    out = out.reshape(out.shape[-2], out.shape[-1])
    return out if out.shape[0] <= out.shape[1] else out.T


def select_candidates(
    table: npt.NDArray[np.float32], num_classes: int, score_threshold: float,
    iou_threshold: float,
) -> tuple[Detections, npt.NDArray[np.int64]]:
    """Boxes (model-input pixels) kept by score and class-aware NMS, best first, with each
    one's column in ``table`` so its mask coefficients or keypoints can be read."""
    from agent.inference.adapters import cxcywh_to_xyxy, nms

    classes = table[4:4 + num_classes]
    best = classes.max(axis=0)
    keep = np.flatnonzero(best > score_threshold)
    candidates = Detections(
        cxcywh_to_xyxy(np.ascontiguousarray(table[:4, keep].T)),
        best[keep].astype(np.float32),
        classes[:, keep].argmax(axis=0).astype(np.int64),
        # The column index rides through NMS in tracker_id, which NMS keeps per row.
        keep.astype(np.int64),
    )
    found = nms(candidates, iou_threshold)
    return found, found.tracker_id.copy()
