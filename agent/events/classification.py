"""Classification events: what a classifier says about a frame, a region or an object.

``cameras[].classify`` says where a classifier looks and when (``run``):

- ``frames``: every processed frame (the whole frame, or ``crop``). An event is sent when
  the top class **changes and holds**: ``hold_frames`` consecutive results with the same new
  top class, each at least ``min_confidence``. The first class to hold is an event too. A
  camera whose own ``model`` is a classifier runs this way.
- ``objects``: two-stage, detect then classify: after the camera's detector, each tracked
  (confirmed) object of the ``objects`` labels seen in the frame is cut out (its box, grown
  by ``padding`` on each side) and classified; the same hold rule applies per object, and
  each prediction carries the object's ``track_id`` and box. The event itself has no
  ``track_id``: that field means a lifecycle (``new``/``update``/``end``), which rules count
  once per track, and each change of an object's class is worth counting.
- ``request``: only when asked (``set/sources/{id}/snapshot``): the snapshot is then a
  ``kind: classification`` event of the latest frame (or ``crop``), whatever the class.

A classification event has ``kind: classification``, ``label`` = the top class, and
``predictions`` = the ``top_k`` classes with their probabilities, each with the region
classified as ``box`` (frame pixels). Rules see them like any other event: the label is
the top class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from agent.clock import utc_datetime
from agent.events.config import ClassifyConfig, SnapshotsConfig
from agent.events.media import jpeg_media
from agent.events.objects import EventContext, Overlay, draw_overlay, label_colour
from agent.events.schema import Box, Event, Label, Media, Prediction

if TYPE_CHECKING:
    from agent.inference.classify import Classification

logger = logging.getLogger(__name__)


@dataclass
class LabelHold:
    """The hold rule for one stream of results (the frame, or one object)."""

    reported: int | None = None
    candidate: int | None = None
    count: int = 0

    def update(self, class_id: int, confidence: float, hold: int, floor: float) -> bool:
        """Feed one result; True when it makes a new top class reportable."""
        if confidence < floor or class_id == self.reported:
            self.candidate, self.count = None, 0
            return False
        if class_id == self.candidate:
            self.count += 1
        else:
            self.candidate, self.count = class_id, 1
        if self.count >= hold:
            self.reported, self.candidate, self.count = class_id, None, 0
            return True
        return False


def grow_box(xyxy: npt.NDArray[np.float32], padding: float, width: int, height: int
             ) -> npt.NDArray[np.float32]:
    """A box grown by ``padding`` of its size on each side, clipped to the frame."""
    box = np.asarray(xyxy, dtype=np.float32).reshape(4).copy()
    dw, dh = (box[2] - box[0]) * padding, (box[3] - box[1]) * padding
    box += np.array([-dw, -dh, dw, dh], dtype=np.float32)
    np.clip(box[0::2], 0, width, out=box[0::2])
    np.clip(box[1::2], 0, height, out=box[1::2])
    return box


class ClassificationProcessor:
    """Turns classifier results into ``kind: classification`` events for one camera.

    Used as the camera's processor when its model is a classifier (``process`` per frame),
    and by the classify stage behind a detector (``objects``, ``request``).
    """

    def __init__(self, labels: Sequence[Label], context: EventContext, config: ClassifyConfig,
                 top_k: int, snapshots: SnapshotsConfig | None = None) -> None:
        self.labels = list(labels)
        self.context = context
        self.config = config
        self.top_k = config.top_k or top_k
        self.snapshots = snapshots or SnapshotsConfig()
        self._frame_hold = LabelHold()
        self._object_holds: dict[str, LabelHold] = {}
        self._last: Classification | None = None
        self.events_by_phase: dict[str, int] = {"classification": 0}

    # -- the camera-processor interface (a classifier as the camera's model) ----------------

    def process(self, result: Classification, image: npt.NDArray[np.uint8], t: float,
                wall: float) -> list[Event]:
        """One frame's result; an event when the hold rule says so."""
        self._last = result
        class_id, confidence = result.best
        if not self._frame_hold.update(class_id, confidence, self.config.hold_frames,
                                       self.config.min_confidence):
            return []
        return [self.event(result, image, wall)]

    def finish(self, wall: float) -> list[Event]:
        """Nothing to end: a classification has no lifecycle. Forget the held class."""
        self._frame_hold = LabelHold()
        self._object_holds.clear()
        return []

    tracking_anything = False
    busy = False
    active_tracks = 0

    def predictions(self) -> list[Prediction]:
        """The latest frame result's top classes (for snapshots taken on request)."""
        return self._predictions(self._last) if self._last is not None else []

    def set_label_thresholds(self, changes: Any) -> dict[str, Any]:
        raise ValueError("a classifier camera has no per-label thresholds; set "
                         "classify.min_confidence in the configuration")

    # -- two-stage: the objects of a detector -------------------------------------------------

    def objects(self, results: Sequence[tuple[str, Classification]],
                image: npt.NDArray[np.uint8], wall: float,
                alive: set[str] | None = None) -> list[Event]:
        """Results per tracked object (track id, classification of its box) -> events."""
        events = []
        for track_id, result in results:
            hold = self._object_holds.setdefault(track_id, LabelHold())
            class_id, confidence = result.best
            if hold.update(class_id, confidence, self.config.hold_frames,
                           self.config.min_confidence):
                events.append(self.event(result, image, wall, track_id))
        if alive is not None:
            for gone in [k for k in self._object_holds if k not in alive]:
                del self._object_holds[gone]
        return events

    # -- building -----------------------------------------------------------------------------

    def _predictions(self, result: Classification, track_id: str | None = None
                     ) -> list[Prediction]:
        x1, y1, x2, y2 = (round(float(v), 1) for v in result.region)
        box = Box(x=x1, y=y1, width=round(x2 - x1, 1), height=round(y2 - y1, 1))
        return [Prediction(label=self.labels[c], confidence=min(1.0, max(0.0, round(p, 4))),
                           box=box, track_id=track_id)
                for c, p in result.top(self.top_k)]

    def _images(self, result: Classification, image: npt.NDArray[np.uint8]) -> list[Media]:
        cfg = self.snapshots
        if not cfg.enabled:
            return []
        images = []
        if cfg.input:
            images.append(jpeg_media(image, "input", cfg.quality, cfg.max_width))
        if cfg.annotated:
            class_id, p = result.best
            overlay = Overlay(boxes=result.region.reshape(1, 4),
                              captions=[f"{self.labels[class_id].id} {p:.0%}"],
                              colours=[label_colour(class_id)])
            images.append(jpeg_media(draw_overlay(image, overlay), "annotated", cfg.quality,
                                     cfg.max_width))
        return images

    def event(self, result: Classification, image: npt.NDArray[np.uint8], wall: float,
              track_id: str | None = None) -> Event:
        """A ``kind: classification`` event for ``result`` on ``image``."""
        ctx = self.context
        class_id, _ = result.best
        self.events_by_phase["classification"] += 1
        return Event(
            kind="classification",
            use_case=ctx.use_case,
            timestamp=utc_datetime(wall),
            device=ctx.device,
            source=ctx.source,
            model=ctx.model,
            label=self.labels[class_id],
            predictions=self._predictions(result, track_id),
            images=self._images(result, image),
            metadata=dict(ctx.metadata),
        )
