"""One vectorised detections type that every detector adapter produces.

Everything downstream (filters, zones, tracking, drawing) works on ``Detections`` and never
asks which model produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def _empty_ids() -> IntArray:
    return np.zeros((0,), dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    """N detections as parallel arrays.

    ``xyxy``: ``[N, 4]`` float32 pixel corners in the original frame; ``confidence``: ``[N]``;
    ``class_id``: ``[N]`` int64; ``tracker_id``: ``[N]`` int64, -1 where untracked.
    """

    xyxy: FloatArray
    confidence: FloatArray
    class_id: IntArray
    tracker_id: IntArray = field(default_factory=_empty_ids)

    def __post_init__(self) -> None:
        n = len(self.confidence)
        if self.xyxy.shape != (n, 4):
            raise ValueError(f"xyxy must be [{n}, 4], got {list(self.xyxy.shape)}")
        if self.class_id.shape != (n,):
            raise ValueError(f"class_id must be [{n}], got {list(self.class_id.shape)}")
        if self.tracker_id.shape == (0,) and n:
            object.__setattr__(self, "tracker_id", np.full((n,), -1, dtype=np.int64))
        elif self.tracker_id.shape != (n,):
            raise ValueError(f"tracker_id must be [{n}], got {list(self.tracker_id.shape)}")

    @classmethod
    def empty(cls) -> Detections:
        """No detections."""
        return cls(
            np.zeros((0, 4), dtype=np.float32),
            np.zeros((0,), dtype=np.float32),
            np.zeros((0,), dtype=np.int64),
        )

    def __len__(self) -> int:
        return len(self.confidence)

    def __getitem__(
        self, index: npt.NDArray[np.bool_] | npt.NDArray[np.int64] | slice
    ) -> Detections:
        """Select a subset with a boolean mask, index array or slice."""
        return Detections(
            self.xyxy[index], self.confidence[index], self.class_id[index], self.tracker_id[index]
        )

    @property
    def area(self) -> FloatArray:
        """Box areas in pixels."""
        wh = np.clip(self.xyxy[:, 2:4] - self.xyxy[:, 0:2], 0, None)
        return (wh[:, 0] * wh[:, 1]).astype(np.float32)
