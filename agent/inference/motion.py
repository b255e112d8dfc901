"""The motion gate: cheap frame differencing that decides whether the detector runs at all.

A camera watching an empty street spends most of its frames on nothing. Differencing a small
blurred grey image against a running-average background costs well under a millisecond, where
the detector costs tens; so the detector only runs when something changed (the worker adds
the rules for objects already being tracked, see ``agent.pipeline.vision``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.inference.config import MotionConfig

# cv2 is imported inside MotionGate, not here: the daemon imports this module (through
# agent.pipeline.vision) whatever its sources, and an agent without cameras should not load
# OpenCV.

Polygon = Sequence[Sequence[float]]
"""Normalised ``[[x, y], ...]`` corners, 0..1 of the frame's width and height."""


@dataclass(frozen=True)
class MotionResult:
    """What the gate saw in one frame: ``fraction`` of unmasked pixels that changed."""

    motion: bool
    fraction: float


# A change over most of the picture is lighting (auto exposure, IR switching on, a cloud),
# not an object: the background is reset at once instead of reporting motion for seconds.
_GLOBAL_CHANGE = 0.6


class MotionGate:
    """Running-average background subtraction on a small, blurred grey image.

    ``masks`` (normalised polygons) are ignored, as they are for detections: a clock overlay
    or a tree in the wind should not keep the detector busy.
    """

    def __init__(self, config: MotionConfig, masks: Sequence[Polygon] = ()) -> None:
        self.config = config
        self._masks = [np.asarray(m, dtype=np.float32).reshape(-1, 2) for m in masks]
        self._background: npt.NDArray[np.float32] | None = None
        self._valid: npt.NDArray[np.bool_] | None = None
        self._size: tuple[int, int] | None = None
        self._frame_shape: tuple[int, ...] | None = None

    def reset(self) -> None:
        """Forget the background (after a reconnect the picture may have moved)."""
        self._background = None

    def _prepare(self, shape: tuple[int, ...]) -> None:
        import cv2

        height, width = shape[:2]
        small_w = min(self.config.width, width)
        small_h = max(1, round(height * small_w / width))
        valid = np.ones((small_h, small_w), dtype=np.uint8)
        for poly in self._masks:
            pts = np.round(poly * np.array([small_w, small_h], dtype=np.float32)).astype(np.int32)
            cv2.fillPoly(valid, [pts], 0)
        self._size = (small_w, small_h)
        self._valid = valid.astype(bool)
        self._frame_shape = shape
        self._background = None

    def small_grey(self, frame_bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """The blurred grey thumbnail motion is computed on."""
        import cv2

        if self._frame_shape != frame_bgr.shape:
            self._prepare(frame_bgr.shape)
        assert self._size is not None
        # Shrink first: colour conversion and blur then touch 16x fewer pixels.
        small = cv2.resize(frame_bgr, self._size, interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return np.asarray(cv2.GaussianBlur(grey, (5, 5), 0), dtype=np.uint8)

    def update(self, frame_bgr: npt.NDArray[np.uint8]) -> MotionResult:
        """Compare ``frame_bgr`` with the background, then learn it into the background."""
        import cv2

        grey = self.small_grey(frame_bgr)
        assert self._valid is not None
        if self._background is None:
            self._background = grey.astype(np.float32)
            # Nothing to compare with: let the detector look once, so that objects already
            # in view when the camera (re)starts are found.
            return MotionResult(True, 1.0)
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(self._background))
        changed = (diff > self.config.threshold) & self._valid
        valid_pixels = max(1, int(np.count_nonzero(self._valid)))
        fraction = float(np.count_nonzero(changed)) / valid_pixels
        if fraction > _GLOBAL_CHANGE:
            self._background = grey.astype(np.float32)
        else:
            cv2.accumulateWeighted(grey, self._background, self.config.alpha)
        return MotionResult(fraction >= max(self.config.min_area, 1e-9), fraction)
