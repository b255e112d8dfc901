"""From detections to object events: filters, masks, zones, tracking, lifecycle, snapshots.

Per camera, every detector run goes through:

1. **filters** per label (``objects.filters``): ``min_score`` to be tracked at all, box
   ``min_area``/``max_area`` and width/height ``min_ratio``/``max_ratio``;
2. **masks**: a detection whose bottom-centre (where it touches the ground) lies in a mask
   is dropped;
3. **tracking** (``agent.events.tracking``): the same object keeps its track id;
4. **zones**: the zones an object is in now (``current_zones``, after ``inertia`` frames)
   and has ever entered (``entered_zones``);
5. **lifecycle**: one ``new`` when the object is confirmed, a few ``update`` when something
   meaningful changes, one ``end`` after ``tracking.max_disappeared`` detector runs without
   it.

Confirmation uses the **median** of the last five scores (and at least ``tracking.min_hits``
frames) against the label's ``threshold``: one lucky frame of a shadow at 0.9 does not make a
person, and one bad frame of a real person does not hide them. The maximum would confirm the
first spike; the mean lets a single outlier drag the result.

Updates are sent only for a better snapshot (score above the last sent one by
``snapshots.better_by``), a change of ``current_zones`` or ``entered_zones``, or a change of
``stationary``; never more often than ``tracking.update_interval_s`` per object, and a change
that arrives inside the interval is sent when it ends (if it still holds). A parked car is
one ``new`` and then silence.

Images: ``new`` carries the frame (``input``) and the frame with boxes, labels, zones and
masks drawn (``annotated``); an ``update`` carries them only when it is a better snapshot
(the best frame seen since the previous images, whose box and score are then in
``predictions``); ``end`` carries none, unless ``snapshots.on_end`` attaches the best
snapshot already sent (no new encoding).
"""

from __future__ import annotations

import colorsys
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from agent.clock import utc_datetime
from agent.events.config import (
    LabelFilter,
    ObjectsConfig,
    SnapshotsConfig,
    TrackingConfig,
    ZoneConfig,
)
from agent.events.media import jpeg_media
from agent.events.schema import (
    Box,
    DeviceRef,
    Event,
    Label,
    Media,
    MetadataValue,
    ModelRef,
    ObjectInfo,
    Phase,
    Prediction,
    SourceRef,
)
from agent.events.tracking import Track, Tracker
from agent.inference.detections import Detections

# cv2 is imported where images are drawn and shrunk, not here: the daemon imports this module
# (through agent.pipeline) whatever its sources, and an agent without cameras should not load
# OpenCV.

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


# -- geometry --------------------------------------------------------------------------------


def points_in_polygon(points: FloatArray, polygon: FloatArray) -> BoolArray:
    """Which of ``[N, 2]`` points lie inside ``[K, 2]`` polygon (even-odd rule, vectorised)."""
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    x = points[:, 0:1]
    y = points[:, 1:2]
    x1, y1 = polygon[:, 0][None, :], polygon[:, 1][None, :]
    x2, y2 = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    straddles = (y1 > y) != (y2 > y)
    # "x left of the edge's crossing point", multiplied out so that no division by a
    # horizontal edge's zero height can happen (dy is never zero where an edge straddles).
    dy = y2 - y1
    lhs = (x - x1) * dy
    rhs = (y - y1) * (x2 - x1)
    hits = straddles & np.where(dy > 0, lhs < rhs, lhs > rhs)
    return (np.count_nonzero(hits, axis=1) % 2 == 1).astype(bool)


def bottom_centres(xyxy: FloatArray, width: int, height: int) -> FloatArray:
    """Normalised bottom-centre points of ``[N, 4]`` boxes: where an object meets the ground."""
    pts = np.empty((len(xyxy), 2), dtype=np.float32)
    pts[:, 0] = (xyxy[:, 0] + xyxy[:, 2]) * 0.5 / max(width, 1)
    # A hair above the bottom edge, so a box touching the frame's edge is inside a polygon
    # drawn along that edge.
    pts[:, 1] = (xyxy[:, 3] - 0.5) / max(height, 1)
    return pts


# -- drawing ---------------------------------------------------------------------------------


def label_colour(class_id: int) -> tuple[int, int, int]:
    """A stable, well separated BGR colour per class (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


class Drawing(Protocol):
    """A shape drawn on annotated images (outlines, skeletons: ``agent.events.shapes``)."""

    def scaled(self, factor: float) -> Drawing: ...
    def draw(self, image: npt.NDArray[np.uint8], line: int) -> None: ...


@dataclass(frozen=True)
class Overlay:
    """What to draw on one frame: boxes with captions, zones and masks (pixel polygons)."""

    boxes: FloatArray
    captions: list[str]
    colours: list[tuple[int, int, int]]
    highlight: int = -1
    zones: Mapping[str, FloatArray] = field(default_factory=dict)
    masks: Sequence[FloatArray] = ()
    shapes: Sequence[Drawing] = ()


def draw_overlay(image: npt.NDArray[np.uint8], overlay: Overlay) -> npt.NDArray[np.uint8]:
    """A copy of ``image`` with the overlay drawn; sizes scale with the image."""
    import cv2

    out = image.copy()
    w = out.shape[1]
    line = max(1, round(w / 480))
    font_scale = max(0.4, w / 1600)
    if overlay.masks:
        shade = out.copy()
        cv2.fillPoly(shade, [np.round(m).astype(np.int32) for m in overlay.masks], (40, 40, 40))
        cv2.addWeighted(shade, 0.5, out, 0.5, 0, dst=out)
    for name, poly in overlay.zones.items():
        pts = np.round(poly).astype(np.int32)
        cv2.polylines(out, [pts], True, (0, 215, 255), line, cv2.LINE_AA)
        x, y = int(pts[:, 0].min()), int(pts[:, 1].min())
        cv2.putText(out, name, (x + 3, max(12, y + 14)), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 215, 255), line, cv2.LINE_AA)
    for shape in overlay.shapes:
        shape.draw(out, line)
    for i, (box, caption, colour) in enumerate(
        zip(overlay.boxes, overlay.captions, overlay.colours, strict=True)
    ):
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        thick = line * 2 if i == overlay.highlight else line
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thick)
        (tw, th), base = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, line)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 2), colour, -1)
        cv2.putText(out, caption, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), line, cv2.LINE_AA)
    return out


# -- lifecycle -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventContext:
    """What every event of one camera shares."""

    device: DeviceRef
    source: SourceRef
    model: ModelRef | None
    use_case: str
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)


@dataclass
class _Snapshot:
    """A frame worth sending, with what to draw on it and the object's box and score there."""

    image: npt.NDArray[np.uint8]
    overlay: Overlay
    box: FloatArray
    score: float


@dataclass
class _ObjectState:
    """What the lifecycle remembers about one track beyond the tracker's geometry."""

    first_wall: float
    last_wall: float
    zone_frames: dict[str, int] = field(default_factory=dict)
    current_zones: list[str] = field(default_factory=list)
    entered_zones: list[str] = field(default_factory=list)
    # What was last reported, to tell a meaningful change from noise.
    sent_t: float = float("-inf")
    sent_zones: tuple[list[str], list[str]] = ([], [])
    sent_stationary: bool = False
    sent_score: float = 0.0
    sent_images: list[Media] = field(default_factory=list)
    candidate: _Snapshot | None = None


class ObjectProcessor:
    """Turns one camera's detector outputs into object events; one per camera, one thread.

    ``labels`` are the model's classes by index, as catalogue labels. Unknown label ids in
    the configuration raise ``ValueError`` naming the key.
    """

    def __init__(
        self,
        labels: Sequence[Label],
        context: EventContext,
        objects: ObjectsConfig | None = None,
        zones: Mapping[str, ZoneConfig] | None = None,
        masks: Sequence[Sequence[tuple[float, float]]] = (),
        tracking: TrackingConfig | None = None,
        snapshots: SnapshotsConfig | None = None,
    ) -> None:
        self.labels = list(labels)
        self.context = context
        self.objects = objects or ObjectsConfig()
        self.zones = dict(zones or {})
        self.tracking = tracking or TrackingConfig()
        self.snapshots = snapshots or SnapshotsConfig()
        self.tracker = Tracker(self.tracking)
        self._masks = [np.asarray(m, dtype=np.float32) for m in masks]
        self._zone_polys = {n: np.asarray(z.coordinates, dtype=np.float32)
                            for n, z in self.zones.items()}
        self._states: dict[str, _ObjectState] = {}
        self.events_by_phase: dict[str, int] = {"new": 0, "update": 0, "end": 0}
        self._build_filters()

    # -- configuration checked against the model's labels -----------------------------------

    def _build_filters(self) -> None:
        index = {label.id: i for i, label in enumerate(self.labels)}
        known = ", ".join(label.id for label in self.labels[:12])
        more = "..." if len(self.labels) > 12 else ""

        def check(where: str, label_id: str) -> int:
            if label_id not in index:
                raise ValueError(f"{where}: unknown label {label_id!r} for model "
                                 f"{self.context.model.name if self.context.model else '?'} "
                                 f"(labels: {known}{more})")
            return index[label_id]

        n = len(self.labels)
        self._tracked = np.zeros(n, dtype=bool)
        for label_id in self.objects.track:
            self._tracked[check("objects.track", label_id)] = True
        default = LabelFilter()
        per_class = [default] * n
        for label_id, flt in self.objects.filters.items():
            per_class[check(f"objects.filters.{label_id}", label_id)] = flt
        self._min_score = np.array([f.min_score for f in per_class], dtype=np.float32)
        self._threshold = np.array([f.threshold for f in per_class], dtype=np.float32)
        self._min_area = np.array([f.min_area for f in per_class], dtype=np.float64)
        self._max_area = np.array([np.inf if f.max_area is None else f.max_area
                                   for f in per_class], dtype=np.float64)
        self._min_ratio = np.array([f.min_ratio for f in per_class], dtype=np.float32)
        self._max_ratio = np.array([np.inf if f.max_ratio is None else f.max_ratio
                                    for f in per_class], dtype=np.float32)
        self._zone_classes: dict[str, BoolArray] = {}
        for name, zone in self.zones.items():
            allowed = np.ones(n, dtype=bool)
            if zone.objects is not None:
                allowed[:] = False
                for label_id in zone.objects:
                    allowed[check(f"zones.{name}.objects", label_id)] = True
            self._zone_classes[name] = allowed

    def set_label_thresholds(
        self, labels: Mapping[str, Mapping[str, float]]
    ) -> dict[str, dict[str, float]]:
        """Change ``threshold``/``min_score`` per label at runtime; all or nothing.

        Raises ``ValueError`` for a label the model does not have, changing nothing. The
        arrays are replaced whole, so the worker thread sees either the old or the new set.
        """
        index = {label.id: i for i, label in enumerate(self.labels)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"unknown label(s) {', '.join(unknown)} for model "
                             f"{self.context.model.name if self.context.model else '?'}")
        min_score, threshold = self._min_score.copy(), self._threshold.copy()
        for label_id, values in labels.items():
            i = index[label_id]
            if "min_score" in values:
                min_score[i] = values["min_score"]
            if "threshold" in values:
                threshold[i] = values["threshold"]
        self._min_score, self._threshold = min_score, threshold
        # float32 storage: round so the answer shows the values as they were given.
        return {lid: {"min_score": round(float(min_score[index[lid]]), 6),
                      "threshold": round(float(threshold[index[lid]]), 6)} for lid in labels}

    # -- the per-frame work -----------------------------------------------------------------

    def filter(self, dets: Detections, width: int, height: int) -> tuple[Detections, BoolArray]:
        """Detections that pass labels, filters and masks; and which may start a track."""
        n = len(self.labels)
        cls = dets.class_id
        known = (cls >= 0) & (cls < n)
        c = np.where(known, cls, 0)
        conf = dets.confidence
        xyxy = dets.xyxy
        bw = np.clip(xyxy[:, 2] - xyxy[:, 0], 0.0, None)
        bh = np.clip(xyxy[:, 3] - xyxy[:, 1], 0.0, None)
        area = bw * bh
        ratio = bw / np.maximum(bh, 1e-6)
        frame_area = float(width * height)
        min_area = np.where(self._min_area <= 1.0, self._min_area * frame_area, self._min_area)
        max_area = np.where(self._max_area <= 1.0, self._max_area * frame_area, self._max_area)
        keep = (
            known
            & self._tracked[c]
            & (conf >= np.minimum(self._min_score[c], self.tracking.low_score))
            & (area >= min_area[c])
            & (area <= max_area[c])
            & (ratio >= self._min_ratio[c])
            & (ratio <= self._max_ratio[c])
        )
        if self._masks and keep.any():
            pts = bottom_centres(xyxy, width, height)
            for poly in self._masks:
                keep &= ~points_in_polygon(pts, poly)
        kept = dets[keep]
        return kept, kept.confidence >= self._min_score[kept.class_id]

    def process(
        self, dets: Detections, image: npt.NDArray[np.uint8], t: float, wall: float
    ) -> list[Event]:
        """One detector run on ``image`` (taken at timeline ``t``, epoch ``wall``) -> events."""
        height, width = image.shape[:2]
        kept, high = self.filter(dets, width, height)
        step = self.tracker.update(kept, t, high)
        events: list[Event] = []
        for track in step.lost:
            state = self._states.pop(track.id, None)
            if track.confirmed and state is not None:
                events.append(self._end(track, state, wall))
        for track in step.seen:
            state = self._states.get(track.id)
            if state is None:
                state = self._states[track.id] = _ObjectState(first_wall=wall, last_wall=wall)
            state.last_wall = wall
        self._update_zones(step.seen, width, height)
        overlay: Overlay | None = None
        for track in step.seen:
            state = self._states[track.id]
            if not track.confirmed:
                if (track.hits >= self.tracking.min_hits
                        and track.median_score() >= self._threshold[track.class_id]):
                    track.confirmed = True
                    overlay = overlay or self._overlay(step.seen, width, height)
                    snap = _Snapshot(image, overlay, track.xyxy.copy(), track.score)
                    events.append(self._emit("new", track, state, t, wall, snap))
                continue
            floor = max(state.sent_score, state.candidate.score if state.candidate else 0.0)
            if (self.snapshots.enabled and track.score >= floor + self.snapshots.better_by
                    and track.score > floor):
                overlay = overlay or self._overlay(step.seen, width, height)
                state.candidate = _Snapshot(image, overlay, track.xyxy.copy(), track.score)
        for track in self.tracker.tracks:
            if not track.confirmed:
                continue
            state = self._states[track.id]
            if t - state.sent_t < self.tracking.update_interval_s:
                continue
            if (state.candidate is not None
                    or (state.current_zones, state.entered_zones) != state.sent_zones
                    or track.stationary != state.sent_stationary):
                events.append(self._emit("update", track, state, t, wall, state.candidate))
        return events

    def finish(self, wall: float) -> list[Event]:
        """End every confirmed object now (the source ended, stopped or went away)."""
        events = []
        for track in self.tracker.remove_all():
            state = self._states.pop(track.id, None)
            if track.confirmed and state is not None:
                events.append(self._end(track, state, wall))
        self._states.clear()
        return events

    # -- queries for the worker -------------------------------------------------------------

    @property
    def active_tracks(self) -> int:
        """Confirmed objects being followed now."""
        return sum(1 for tr in self.tracker.tracks if tr.confirmed)

    @property
    def busy(self) -> bool:
        """Whether any track may still change, so the detector should keep running.

        A stationary object that the last detector run did not find counts: it may have
        left, and must be seen to be gone within ``max_disappeared`` runs at the full rate,
        not at the keepalive rate.
        """
        return any(not tr.stationary or tr.missed > 0 for tr in self.tracker.tracks)

    @property
    def tracking_anything(self) -> bool:
        return bool(self.tracker.tracks)

    def predictions(self) -> list[Prediction]:
        """The confirmed objects' latest boxes (for snapshots taken on request)."""
        return [self._prediction(tr, tr.xyxy, tr.score) for tr in self.tracker.tracks
                if tr.confirmed]

    # -- helpers ----------------------------------------------------------------------------

    def _zone_hits(self, seen: list[Track], width: int, height: int) -> dict[str, BoolArray]:
        """Per zone, which ``seen`` tracks are inside it in this frame."""
        boxes = np.stack([tr.xyxy for tr in seen])
        pts = bottom_centres(boxes, width, height)
        classes = np.array([tr.class_id for tr in seen], dtype=np.int64)
        return {name: points_in_polygon(pts, poly) & self._zone_classes[name][classes]
                for name, poly in self._zone_polys.items()}

    def _update_zones(self, seen: list[Track], width: int, height: int) -> None:
        if not self.zones or not seen:
            return
        inside = self._zone_hits(seen, width, height)
        for i, track in enumerate(seen):
            state = self._states[track.id]
            current = []
            for name, zone in self.zones.items():
                frames = state.zone_frames.get(name, 0) + 1 if inside[name][i] else 0
                state.zone_frames[name] = frames
                if frames >= zone.inertia:
                    current.append(name)
                    if name not in state.entered_zones:
                        state.entered_zones.append(name)
            state.current_zones = current

    def _overlay(self, seen: list[Track], width: int, height: int) -> Overlay:
        size = np.array([width, height], dtype=np.float32)
        boxes = (np.stack([tr.xyxy for tr in seen]) if seen
                 else np.zeros((0, 4), dtype=np.float32))
        captions = [f"{self.labels[tr.class_id].id} {tr.score:.0%} #{tr.id[:4]}" for tr in seen]
        colours = [label_colour(tr.class_id) if tr.confirmed else (160, 160, 160) for tr in seen]
        return Overlay(
            boxes=boxes, captions=captions, colours=colours,
            zones={n: p * size for n, p in self._zone_polys.items()},
            masks=[m * size for m in self._masks],
        )

    def _images(self, snap: _Snapshot, track: Track) -> list[Media]:
        cfg = self.snapshots
        if not cfg.enabled or not (cfg.input or cfg.annotated):
            return []
        image = snap.image
        overlay = snap.overlay
        width = image.shape[1]
        if cfg.max_width is not None and width > cfg.max_width:
            # Shrink once, then draw at the final size so captions stay legible.
            import cv2

            scale = cfg.max_width / width
            image = np.asarray(cv2.resize(image, (cfg.max_width,
                                                  max(1, round(image.shape[0] * scale))),
                                          interpolation=cv2.INTER_AREA), dtype=np.uint8)
            overlay = Overlay(
                boxes=overlay.boxes * scale, captions=overlay.captions, colours=overlay.colours,
                zones={n: p * scale for n, p in overlay.zones.items()},
                masks=[m * scale for m in overlay.masks],
                shapes=[s.scaled(scale) for s in overlay.shapes],
            )
        images = []
        if cfg.input:
            images.append(jpeg_media(image, "input", cfg.quality))
        if cfg.annotated:
            highlight = next((i for i, b in enumerate(snap.overlay.boxes)
                              if np.allclose(b, snap.box)), -1)
            overlay = Overlay(overlay.boxes, overlay.captions, overlay.colours, highlight,
                              overlay.zones, overlay.masks, overlay.shapes)
            images.append(jpeg_media(draw_overlay(image, overlay), "annotated", cfg.quality))
        return images

    def _prediction(self, track: Track, xyxy: FloatArray, score: float) -> Prediction:
        return Prediction(label=self.labels[track.class_id], confidence=_unit(score),
                          box=_box(xyxy), track_id=track.id)

    def _event(
        self,
        phase: Phase,
        track: Track,
        state: _ObjectState,
        wall: float,
        images: list[Media],
        shown: tuple[FloatArray, float] | None = None,
        ended_at: float | None = None,
    ) -> Event:
        ctx = self.context
        box = _box(track.xyxy)
        xyxy, score = shown if shown is not None else (track.xyxy, track.score)
        self.events_by_phase[phase] += 1
        return Event(
            kind="object",
            use_case=ctx.use_case,
            timestamp=utc_datetime(wall),
            device=ctx.device,
            source=ctx.source,
            model=ctx.model,
            phase=phase,
            track_id=track.id,
            started_at=utc_datetime(state.first_wall),
            ended_at=utc_datetime(ended_at) if ended_at is not None else None,
            label=self.labels[track.class_id],
            predictions=[self._prediction(track, xyxy, score)],
            object=ObjectInfo(
                score=_unit(track.score),
                top_score=_unit(track.top_score),
                threshold=float(self._threshold[track.class_id]),
                box=box,
                area=round(box.width * box.height, 1),
                current_zones=list(state.current_zones),
                entered_zones=list(state.entered_zones),
                stationary=track.stationary,
                frames=track.hits,
            ),
            images=images,
            metadata=dict(ctx.metadata),
        )

    def _emit(
        self,
        phase: Literal["new", "update"],
        track: Track,
        state: _ObjectState,
        t: float,
        wall: float,
        snap: _Snapshot | None,
    ) -> Event:
        images: list[Media] = []
        shown = None
        if snap is not None:
            images = self._images(snap, track)
            shown = (snap.box, snap.score)
            state.sent_score = max(state.sent_score, snap.score)
            if images:
                state.sent_images = images
        state.candidate = None
        state.sent_t = t
        state.sent_zones = (list(state.current_zones), list(state.entered_zones))
        state.sent_stationary = track.stationary
        return self._event(phase, track, state, wall, images, shown)

    def _end(self, track: Track, state: _ObjectState, wall: float) -> Event:
        images = list(state.sent_images) if self.snapshots.on_end else []
        return self._event("end", track, state, wall, images, ended_at=state.last_wall)


def _unit(value: float) -> float:
    return float(min(1.0, max(0.0, round(value, 4))))


def _box(xyxy: FloatArray) -> Box:
    x1, y1, x2, y2 = (round(float(v), 1) for v in xyxy)
    return Box(x=x1, y=y1, width=round(x2 - x1, 1), height=round(y2 - y1, 1))
