"""Multi-object tracking by IoU, ByteTrack style: who is who from one frame to the next.

Each detection is matched to the track whose predicted box (last box plus its velocity)
overlaps it most, class by class, greedily by IoU. Matching runs in two stages as in
ByteTrack: confident detections first, then weak ones (``low_score`` and up), which may only
keep an existing track alive, never start one; a weak model that flickers between 0.3 and 0.6
on the same object keeps one track instead of breaking it into several.

One object, one story: a confident detection left over by matching that lies mostly inside a
same-label track's box (intersection over the smaller box at least ``contained_threshold``)
joins that track rather than starting a new one. YOLOv3-tiny returns such a second box inside
a person walking out of the frame (IoU 0.29-0.37 with the whole box, so NMS keeps it); as a
track of its own it became a second ``new`` event. The price: two same-label objects, one
standing almost wholly in front of the other, are one track until they part.

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

from agent.events.config import TrackingConfig
from agent.inference.detections import Detections

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

SCORE_HISTORY = 10
"""Scores kept per track, for the median that confirms it."""


def _overlaps(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``[M, N]`` intersection areas of ``[M, 4]`` and ``[N, 4]`` xyxy boxes, and each box's
    own area (``[M]``, ``[N]``)."""
    a = a.reshape(-1, 4)
    b = b.reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    return inter, area_a, area_b


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """``[M, N]`` intersection over union of ``[M, 4]`` and ``[N, 4]`` xyxy boxes."""
    inter, area_a, area_b = _overlaps(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def box_ios(a: FloatArray, b: FloatArray) -> FloatArray:
    """``[M, N]`` intersection over the smaller box's area: 1 when one lies inside the other."""
    inter, area_a, area_b = _overlaps(a, b)
    smaller = np.minimum(area_a[:, None], area_b[None, :])
    return np.where(smaller > 0, inter / np.maximum(smaller, 1e-9), 0.0).astype(np.float32)


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
        if m and n:
            self._join_contained(dets, t, high_mask, det_taken, track_taken)
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
        order = np.argsort(-dets.confidence, kind="stable") if n else np.zeros(0, np.int64)
        for j in order[~det_taken[order] & high_mask[order]].tolist():
            if self._inside(dets, j, born) is not None:
                continue  # a second box of an object born this frame: not a second object
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

    def _inside(self, dets: Detections, j: int, tracks: list[Track]) -> int | None:
        """Index in ``tracks`` of the same-label track detection ``j`` lies inside, if any.

        "Inside" is intersection over the smaller box at least ``contained_threshold``; a
        track seen this frame is compared at its new box, one not seen at its prediction.
        """
        threshold = self.config.contained_threshold
        if threshold is None or not tracks:
            return None
        label = int(dets.class_id[j])
        same = [k for k, tr in enumerate(tracks) if tr.class_id == label]
        if not same:
            return None
        boxes = np.stack([tracks[k].xyxy if tracks[k].det_index >= 0 else tracks[k].predicted()
                          for k in same]).astype(np.float32)
        ios = box_ios(dets.xyxy[j], boxes)[0]
        best = int(np.argmax(ios))
        return same[best] if float(ios[best]) >= threshold else None

    def _join_contained(self, dets: Detections, t: float, high_mask: BoolArray,
                        det_taken: BoolArray, track_taken: BoolArray) -> None:
        """Confident detections left over by IoU matching that lie inside a track join it.

        A person half out of the frame often comes back as a whole box plus a second box
        inside it (their IoU is low, so NMS keeps both): the inner box is the same object.
        A track already matched this frame just absorbs it; one not matched continues with it.
        """
        order = np.argsort(-dets.confidence, kind="stable")
        for j in order[~det_taken[order] & high_mask[order]].tolist():
            k = self._inside(dets, j, self.tracks)
            if k is None:
                continue
            if not track_taken[k]:
                self._continue(self.tracks[k], dets, j, t)
                track_taken[k] = True
            det_taken[j] = True

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
