"""Multi-object tracking by IoU, ByteTrack style: who is who from one frame to the next.

Each detection is matched to the track whose predicted box (last box plus its velocity)
overlaps it most, class by class, greedily by IoU. Matching runs in two stages as in
ByteTrack: confident detections first, then weak ones (``low_score`` and up), which may only
keep an existing track alive, never start one; a weak model that flickers between 0.3 and 0.6
on the same object keeps one track instead of breaking it into several.

The tracker only knows boxes, classes and scores. What a track means for the user
(confirmation, zones, events) lives in ``agent.events.objects``.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from agent.inference.detections import Detections

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

SCORE_HISTORY = 10
"""Scores kept per track, for the median that confirms it."""


class TrackingConfig(BaseModel):
    """``cameras[].tracking``: how detections become tracked objects, and how often they talk."""

    model_config = ConfigDict(extra="forbid")

    max_disappeared: int = Field(
        default=25, ge=1,
        description="detector runs without seeing an object before it ends (frames; 25 is "
        "5 s at 5 fps)",
    )
    iou_threshold: float = Field(default=0.3, gt=0.0, le=1.0,
                                 description="overlap a detection needs to continue a track")
    update_interval_s: float = Field(default=2.0, ge=0.0,
                                     description="at most one update event per object this often")
    min_hits: int = Field(default=3, ge=1,
                          description="frames an object must be seen before it can be confirmed")
    low_score: float = Field(
        default=0.1, ge=0.0, le=1.0,
        description="detections from this score up (below min_score) keep a track alive",
    )
    stationary_iou: float = Field(
        default=0.85, gt=0.0, le=1.0,
        description="overlap with where it stood that still counts as not moving",
    )
    stationary_frames: int = Field(default=10, ge=1,
                                   description="frames without moving before an object is "
                                   "stationary")


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """``[M, N]`` intersection over union of ``[M, 4]`` and ``[N, 4]`` xyxy boxes."""
    a = a.reshape(-1, 4)
    b = b.reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def greedy_match(
    iou: FloatArray, threshold: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pairs (rows, cols) taken greedily by falling IoU, each row and column at most once.

    Greedy rather than Hungarian: with the few objects a camera sees the answers are the same
    in practice, and it needs no SciPy on the board.
    """
    rows_out: list[int] = []
    cols_out: list[int] = []
    if iou.size:
        cand_r, cand_c = np.nonzero(iou >= threshold)
        order = np.argsort(-iou[cand_r, cand_c], kind="stable")
        used_r: set[int] = set()
        used_c: set[int] = set()
        for r, c in zip(cand_r[order].tolist(), cand_c[order].tolist(), strict=True):
            if r in used_r or c in used_c:
                continue
            used_r.add(r)
            used_c.add(c)
            rows_out.append(r)
            cols_out.append(c)
    return np.asarray(rows_out, dtype=np.int64), np.asarray(cols_out, dtype=np.int64)


def _new_track_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class Track:
    """One object followed across frames.

    ``missed`` counts consecutive detector runs without it; ``hits`` the runs that found it.
    ``det_index`` is its detection's index in the latest ``update`` input, -1 when unmatched.
    ``confirmed`` is set by the owner (the object lifecycle) and keeps the track alive for
    ``max_disappeared`` instead of a few frames.
    """

    id: str
    class_id: int
    xyxy: FloatArray
    score: float
    first_t: float
    last_t: float
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=SCORE_HISTORY))
    top_score: float = 0.0
    hits: int = 1
    missed: int = 0
    velocity: FloatArray = field(default_factory=lambda: np.zeros(4, dtype=np.float32))
    anchor: FloatArray | None = None
    still_frames: int = 0
    stationary: bool = False
    confirmed: bool = False
    det_index: int = -1

    def predicted(self) -> FloatArray:
        """Where the box should be on the next detector run, moving at its last velocity."""
        return self.xyxy + self.velocity * (self.missed + 1)

    def median_score(self, last: int = 5) -> float:
        """Median of the most recent ``last`` scores (robust to one lucky frame)."""
        recent = list(self.scores)[-last:]
        return float(np.median(recent)) if recent else 0.0


@dataclass(frozen=True)
class TrackerStep:
    """What one ``update`` did: tracks seen this frame, tracks born, tracks given up."""

    seen: list[Track]
    born: list[Track]
    lost: list[Track]


# Unconfirmed tracks are most likely false positives: they are dropped after this many misses
# instead of lingering for max_disappeared.
_TENTATIVE_MAX_MISSED = 2


class Tracker:
    """IoU tracker over ``Detections``; call ``update`` once per detector run."""

    def __init__(
        self, config: TrackingConfig, new_id: Callable[[], str] = _new_track_id
    ) -> None:
        self.config = config
        self._new_id = new_id
        self.tracks: list[Track] = []

    def update(self, dets: Detections, t: float, high: BoolArray | None = None) -> TrackerStep:
        """Match ``dets`` (already filtered) to tracks at time ``t``.

        ``high`` marks detections confident enough to start a track (all when None); the
        others can only continue one.
        """
        n = len(dets)
        high_mask = np.ones(n, dtype=bool) if high is None else np.asarray(high, dtype=bool)
        for track in self.tracks:
            track.det_index = -1
        m = len(self.tracks)
        det_taken = np.zeros(n, dtype=bool)
        track_taken = np.zeros(m, dtype=bool)
        if m and n:
            predicted = np.stack([tr.predicted() for tr in self.tracks]).astype(np.float32)
            classes = np.array([tr.class_id for tr in self.tracks], dtype=np.int64)
            iou = box_iou(predicted, dets.xyxy)
            iou[classes[:, None] != dets.class_id[None, :]] = 0.0
            for stage_mask in (high_mask, ~high_mask):
                sub = iou.copy()
                sub[track_taken, :] = 0.0
                sub[:, ~stage_mask | det_taken] = 0.0
                rows, cols = greedy_match(sub, self.config.iou_threshold)
                for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                    self._continue(self.tracks[r], dets, c, t)
                track_taken[rows] = True
                det_taken[cols] = True
        lost: list[Track] = []
        kept: list[Track] = []
        for track, taken in zip(self.tracks, track_taken.tolist(), strict=True):
            if not taken:
                track.missed += 1
                limit = self.config.max_disappeared if track.confirmed else _TENTATIVE_MAX_MISSED
                if track.missed > limit:
                    lost.append(track)
                    continue
            kept.append(track)
        born: list[Track] = []
        for j in np.flatnonzero(~det_taken & high_mask).tolist():
            score = float(dets.confidence[j])
            track = Track(
                id=self._new_id(), class_id=int(dets.class_id[j]),
                xyxy=dets.xyxy[j].astype(np.float32).copy(), score=score,
                first_t=t, last_t=t, top_score=score, det_index=j,
            )
            track.scores.append(score)
            track.anchor = track.xyxy.copy()
            born.append(track)
        self.tracks = kept + born
        seen = [tr for tr in self.tracks if tr.det_index >= 0]
        return TrackerStep(seen=seen, born=born, lost=lost)

    def _continue(self, track: Track, dets: Detections, j: int, t: float) -> None:
        box = dets.xyxy[j].astype(np.float32)
        steps = track.missed + 1
        # Smoothed per-frame velocity; half the weight on the newest step is enough to follow
        # a walking person at 5 fps without jittering on a parked car.
        track.velocity = (0.5 * track.velocity + 0.5 * (box - track.xyxy) / steps).astype(
            np.float32
        )
        track.xyxy = box.copy()
        track.score = float(dets.confidence[j])
        track.scores.append(track.score)
        track.top_score = max(track.top_score, track.score)
        track.hits += 1
        track.missed = 0
        track.last_t = t
        track.det_index = j
        anchor = track.anchor if track.anchor is not None else box
        if float(box_iou(box, anchor)[0, 0]) >= self.config.stationary_iou:
            track.still_frames += 1
        else:
            track.anchor = box.copy()
            track.still_frames = 0
        track.stationary = track.still_frames >= self.config.stationary_frames

    def remove_all(self) -> list[Track]:
        """Give up every track (the source stopped); returns them."""
        gone, self.tracks = self.tracks, []
        return gone
