"""Object events for segmentation and pose models: outlines and keypoints ride with the box.

``ShapeObjectProcessor`` is the object lifecycle of ``agent.events.objects`` (filters,
masks, tracking, zones, ``new``/``update``/``end``) for ``ShapeDetections``. It adds:

- each prediction's ``polygon`` and ``mask_area`` (segmentation) or ``keypoints`` (pose),
  from the frame whose box the prediction shows;
- zone tests by shape, per zone (``zones.<name>.anchor``): ``box`` is the box's
  bottom-centre as for detectors; ``outline`` puts an object in the zone when any point of
  its outline lies inside the zone or any corner of the zone inside its outline (they
  overlap, up to the outline's bounded points); a keypoint name (``left_ankle``) tests that
  keypoint, and the box's bottom-centre while the keypoint is below
  ``pose.min_confidence``, so one unsure frame does not reset the zone's inertia;
- outlines and skeletons on annotated images.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.events.config import ObjectsConfig, SnapshotsConfig, TrackingConfig, ZoneConfig
from agent.events.objects import (
    BoolArray,
    EventContext,
    ObjectProcessor,
    Overlay,
    bottom_centres,
    label_colour,
    points_in_polygon,
)
from agent.events.schema import Event, Label, Prediction
from agent.events.tracking import Track
from agent.inference.detections import Detections, FloatArray
from agent.inference.shapes import ShapeDetections

logger = logging.getLogger(__name__)

_SHAPES_PER_TRACK = 64
"""Shapes remembered per track by box, so a delayed snapshot's prediction finds its own."""


@dataclass(frozen=True)
class OutlineDrawing:
    """A closed outline in image pixels."""

    points: FloatArray
    colour: tuple[int, int, int]

    def scaled(self, factor: float) -> OutlineDrawing:
        return OutlineDrawing(self.points * factor, self.colour)

    def draw(self, image: npt.NDArray[np.uint8], line: int) -> None:
        import cv2

        if len(self.points) >= 2:
            cv2.polylines(image, [np.round(self.points).astype(np.int32)], True, self.colour,
                          line, cv2.LINE_AA)


@dataclass(frozen=True)
class SkeletonDrawing:
    """Keypoints ``[K, 3]`` (x, y, confidence) and the bones between them."""

    keypoints: FloatArray
    bones: Sequence[tuple[int, int]]
    min_confidence: float
    colour: tuple[int, int, int]

    def scaled(self, factor: float) -> SkeletonDrawing:
        points = self.keypoints.copy()
        points[:, :2] *= factor
        return dataclasses.replace(self, keypoints=points)

    def draw(self, image: npt.NDArray[np.uint8], line: int) -> None:
        import cv2

        sure = self.keypoints[:, 2] >= self.min_confidence
        xy = np.round(self.keypoints[:, :2]).astype(np.int32)
        for a, b in self.bones:
            if sure[a] and sure[b]:
                cv2.line(image, (int(xy[a, 0]), int(xy[a, 1])), (int(xy[b, 0]), int(xy[b, 1])),
                         self.colour, line, cv2.LINE_AA)
        for (x, y), ok in zip(xy.tolist(), sure.tolist(), strict=True):
            if ok:
                cv2.circle(image, (x, y), line * 2 + 1, self.colour, -1, cv2.LINE_AA)


@dataclass(frozen=True)
class _Shape:
    outline: FloatArray | None = None
    area: float | None = None
    keypoints: FloatArray | None = None


class ShapeObjectProcessor(ObjectProcessor):
    """The object lifecycle for segmentation or pose outputs (``ShapeDetections``).

    ``keypoint_names`` (pose) name the keypoints; ``bones`` join them on annotated images.
    A zone whose ``anchor`` the model cannot provide raises ``ValueError`` naming it.
    """

    def __init__(
        self,
        labels: Sequence[Label],
        context: EventContext,
        task: str,
        objects: ObjectsConfig | None = None,
        zones: Mapping[str, ZoneConfig] | None = None,
        masks: Sequence[Sequence[tuple[float, float]]] = (),
        tracking: TrackingConfig | None = None,
        snapshots: SnapshotsConfig | None = None,
        *,
        keypoint_names: Sequence[str] = (),
        bones: Sequence[tuple[int, int]] = (),
        min_keypoint_confidence: float = 0.5,
    ) -> None:
        super().__init__(labels, context, objects, zones, masks, tracking, snapshots)
        self.task = task
        self.keypoint_names = list(keypoint_names)
        self.bones = list(bones)
        self.min_keypoint_confidence = min_keypoint_confidence
        for name, zone in self.zones.items():
            check_anchor(f"zones.{name}.anchor", zone.anchor, task, self.keypoint_names)
        self._frame: ShapeDetections | None = None
        self._kept_index = np.zeros(0, dtype=np.int64)
        self._shapes: dict[str, OrderedDict[bytes, _Shape]] = {}

    # -- the per-frame work, around the base class's -----------------------------------------

    def process(
        self, dets: Detections, image: npt.NDArray[np.uint8], t: float, wall: float
    ) -> list[Event]:
        self._frame = dets if isinstance(dets, ShapeDetections) else None
        events = super().process(dets, image, t, wall)
        alive = {tr.id for tr in self.tracker.tracks}
        for track_id in [k for k in self._shapes if k not in alive]:
            del self._shapes[track_id]
        return events

    def finish(self, wall: float) -> list[Event]:
        events = super().finish(wall)
        self._shapes.clear()
        return events

    def filter(self, dets: Detections, width: int, height: int) -> tuple[Detections, BoolArray]:
        # Each detection's index rides through the filters in tracker_id (which the tracker
        # neither reads nor writes), so a track's shape can be found from its det_index.
        tagged = Detections(dets.xyxy, dets.confidence, dets.class_id,
                            np.arange(len(dets), dtype=np.int64))
        kept, high = super().filter(tagged, width, height)
        self._kept_index = kept.tracker_id.copy()
        return Detections(kept.xyxy, kept.confidence, kept.class_id), high

    def _update_zones(self, seen: list[Track], width: int, height: int) -> None:
        self._record(seen)
        super()._update_zones(seen, width, height)

    def _record(self, seen: list[Track]) -> None:
        frame = self._frame
        if frame is None:
            return
        for track in seen:
            i = int(self._kept_index[track.det_index])
            if frame.keypoints is not None:
                shape = _Shape(keypoints=frame.keypoints[i].copy())
            elif frame.outlines:
                shape = _Shape(outline=frame.outlines[i], area=float(frame.mask_area[i]))
            else:
                continue
            history = self._shapes.setdefault(track.id, OrderedDict())
            history[track.xyxy.tobytes()] = shape
            while len(history) > _SHAPES_PER_TRACK:
                history.popitem(last=False)

    def _latest(self, track: Track, xyxy: FloatArray | None = None) -> _Shape | None:
        history = self._shapes.get(track.id)
        if not history:
            return None
        if xyxy is not None:
            found = history.get(np.asarray(xyxy, dtype=np.float32).tobytes())
            if found is not None:
                return found
        return next(reversed(history.values()))

    # -- zones -------------------------------------------------------------------------------

    def _zone_hits(self, seen: list[Track], width: int, height: int) -> dict[str, BoolArray]:
        hits = super()._zone_hits(seen, width, height)
        size = np.array([width, height], dtype=np.float32)
        boxes = np.stack([tr.xyxy for tr in seen])
        box_points = bottom_centres(boxes, width, height)
        for name, zone in self.zones.items():
            if zone.anchor == "box":
                continue
            poly = self._zone_polys[name]
            inside = np.zeros(len(seen), dtype=bool)
            for i, track in enumerate(seen):
                shape = self._latest(track)
                if zone.anchor == "outline":
                    if shape is not None and shape.outline is not None and len(shape.outline):
                        outline = shape.outline / size
                        inside[i] = bool(points_in_polygon(outline, poly).any()
                                         or points_in_polygon(poly, outline).any())
                    continue
                point = box_points[i]
                if shape is not None and shape.keypoints is not None:
                    k = self.keypoint_names.index(zone.anchor)
                    if shape.keypoints[k, 2] >= self.min_keypoint_confidence:
                        point = shape.keypoints[k, :2] / size
                inside[i] = bool(points_in_polygon(point[None, :], poly)[0])
            classes = np.array([tr.class_id for tr in seen], dtype=np.int64)
            hits[name] = inside & self._zone_classes[name][classes]
        return hits

    # -- what events carry and show ----------------------------------------------------------

    def _overlay(self, seen: list[Track], width: int, height: int) -> Overlay:
        overlay = super()._overlay(seen, width, height)
        drawings: list[OutlineDrawing | SkeletonDrawing] = []
        for track in seen:
            shape = self._latest(track)
            colour = label_colour(track.class_id) if track.confirmed else (160, 160, 160)
            if shape is None:
                continue
            if shape.outline is not None:
                drawings.append(OutlineDrawing(shape.outline, colour))
            elif shape.keypoints is not None:
                drawings.append(SkeletonDrawing(shape.keypoints, self.bones,
                                                self.min_keypoint_confidence, colour))
        return dataclasses.replace(overlay, shapes=drawings)

    def _prediction(self, track: Track, xyxy: FloatArray, score: float) -> Prediction:
        prediction = super()._prediction(track, xyxy, score)
        shape = self._latest(track, xyxy)
        if shape is None:
            return prediction
        return prediction.model_copy(update=shape_fields(shape, self.keypoint_names))


def shape_fields(shape: _Shape, keypoint_names: Sequence[str]) -> dict[str, object]:
    """The prediction fields of one shape, rounded for the wire."""
    if shape.outline is not None:
        return {
            "polygon": [(round(float(x), 1), round(float(y), 1)) for x, y in shape.outline],
            "mask_area": round(float(shape.area or 0.0), 1),
        }
    if shape.keypoints is not None:
        return {"keypoints": {
            name: (round(float(x), 1), round(float(y), 1), round(min(1.0, max(0.0, float(c))), 4))
            for name, (x, y, c) in zip(keypoint_names, shape.keypoints.tolist(), strict=True)
        }}
    return {}


def check_anchor(where: str, anchor: str, task: str, keypoint_names: Sequence[str]) -> None:
    """Raise ``ValueError`` when a model of ``task`` cannot provide zone anchor ``anchor``."""
    if anchor == "box":
        return
    if anchor == "outline":
        if task != "segment":
            raise ValueError(f"{where}: 'outline' needs a segmentation model (this one: {task})")
        return
    if task != "pose" or anchor not in keypoint_names:
        known = ", ".join(keypoint_names) if task == "pose" else "none: not a pose model"
        raise ValueError(f"{where}: {anchor!r} is not box, outline or a keypoint name "
                         f"(keypoints: {known})")
