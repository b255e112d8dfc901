"""A stand-in detector for tests of capture, gating and lifecycle without the real model.

It "detects" pure red squares (BGR 0, 0, 255) drawn on frames, as class 0 (person) with a
fixed score: deterministic, instant, and it goes through the same worker code paths.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from agent.events.schema import ModelRef
from agent.inference.detections import Detections

RED = (0, 0, 255)


class RedSquareDetector:
    """Duck-types ``agent.inference.detector.Detector``: labels, model_ref, detect()."""

    def __init__(self, score: float = 0.9, labels: list[str] | None = None) -> None:
        self.name = "red-squares"
        self.labels = labels or ["person", "bicycle", "car"]
        self.model_ref = ModelRef(name=self.name, sha256="0" * 64)
        self.last_inference_ms = 0.0
        self.score = score
        self.calls = 0

    def detect(self, frame_bgr: npt.NDArray[np.uint8]) -> Detections:
        self.calls += 1
        red = ((frame_bgr[..., 2] > 200) & (frame_bgr[..., 1] < 60)
               & (frame_bgr[..., 0] < 60)).astype(np.uint8)
        n, _labels, stats, _centroids = cv2.connectedComponentsWithStats(red)
        boxes = [s for s in stats[1:n] if s[cv2.CC_STAT_AREA] >= 50]
        if not boxes:
            return Detections.empty()
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h, _a in boxes], dtype=np.float32)
        conf = np.full(len(boxes), self.score, dtype=np.float32)
        return Detections(xyxy, conf, np.zeros(len(boxes), dtype=np.int64))


def red_square_frames(
    count: int, size: int = 60, step: int = 12, start: int = 20, still_from: int | None = None,
    width: int = 320, height: int = 240, seed: int = 3, gone_from: int | None = None,
) -> list[npt.NDArray[np.uint8]]:
    """Frames of a red square moving right by ``step`` px a frame.

    It stands still from frame ``still_from`` and is gone from frame ``gone_from``.
    """
    rng = np.random.default_rng(seed)
    # Dark, so the red square (grey level 76) stands out to the motion gate too.
    base = rng.integers(10, 40, size=(height, width, 3), dtype=np.uint8)
    base = cv2.GaussianBlur(base, (9, 9), 0)
    frames = []
    for i in range(count):
        frame = base.copy()
        k = i if still_from is None else min(i, still_from)
        x = start + k * step
        if x < width and (gone_from is None or i < gone_from):
            cv2.rectangle(frame, (x, 80), (x + size, 80 + size), RED, -1)
        frames.append(frame)
    return frames
