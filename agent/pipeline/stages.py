"""What a camera runs on its frames, by the task of its model, and a classifier behind it.

``build_processor`` picks the events stage for the camera's model: ``ObjectProcessor`` for a
detector, ``ShapeObjectProcessor`` for segmentation and pose, ``ClassificationProcessor``
for a classifier (wrapped in ``FrameClassifier`` so the worker calls ``detect`` on every
model alike). ``ClassifyStage`` is ``cameras[].classify`` with its own classifier behind the
camera's model: per frame, per tracked object (two-stage) or on request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

from agent.events.classification import ClassificationProcessor, grow_box
from agent.events.config import ClassifyConfig
from agent.events.objects import EventContext, ObjectProcessor
from agent.events.schema import Event, Label
from agent.events.shapes import ShapeObjectProcessor
from agent.inference.session import ModelLoadError

if TYPE_CHECKING:
    from agent.inference.classify import Classification, Classifier
    from agent.inference.config import DetectorModelConfig
    from agent.inference.detector import Detector
    from agent.inference.pose import PoseEstimator
    from agent.inference.segment import Segmenter
    from agent.sources.config import CameraConfig

    VisionModel: TypeAlias = "Detector | Classifier | Segmenter | PoseEstimator"

logger = logging.getLogger(__name__)


class FrameClassifier:
    """A classifier as a camera's model: ``detect`` classifies each frame (or its crop).

    With ``run: request`` frames are not classified (``detect`` returns None); the classify
    stage answers snapshot requests instead.
    """

    def __init__(self, classifier: Classifier, config: ClassifyConfig) -> None:
        self.classifier = classifier
        self.config = config
        self.name = classifier.name
        self.labels = classifier.labels
        self.model_ref = classifier.model_ref
        self.task = "classify"

    @property
    def last_inference_ms(self) -> float:
        return self.classifier.last_inference_ms

    def detect(self, frame_bgr: npt.NDArray[np.uint8]) -> Classification | None:
        if self.config.run == "request":
            return None
        h, w = frame_bgr.shape[:2]
        return self.classifier.classify(frame_bgr, self.config.crop_pixels(w, h))


if TYPE_CHECKING:
    FrameModel: TypeAlias = "Detector | Segmenter | PoseEstimator | FrameClassifier"
    """What a camera's worker runs on each frame (``detect``)."""


class _RequestOnly(ClassificationProcessor):
    def process(self, result: Classification | None, image: npt.NDArray[np.uint8], t: float,
                wall: float) -> list[Event]:
        return [] if result is None else super().process(result, image, t, wall)


def build_processor(
    model: Any, labels: Sequence[Label], context: EventContext, config: CameraConfig
) -> ObjectProcessor | ClassificationProcessor:
    """The events stage for ``model`` (a loaded vision model or ``FrameClassifier``).

    Raises ``ValueError`` naming the configuration key that does not fit the model.
    """
    task = getattr(model, "task", "detect")
    if task == "classify":
        classify = config.classify or ClassifyConfig()
        if classify.run == "objects":
            raise ValueError(f"cameras {config.id}: classify.run 'objects' needs a detector as "
                             f"the camera's model; {model.name} is a classifier")
        top_k = model.classifier.config.classify.top_k
        return _RequestOnly(labels, context, classify, top_k, config.snapshots)
    if task in ("segment", "pose"):
        options = model.config.pose
        return ShapeObjectProcessor(
            labels, context, task, objects=config.objects, zones=config.zones,
            masks=config.masks, tracking=config.tracking, snapshots=config.snapshots,
            keypoint_names=options.keypoints if task == "pose" else (),
            bones=options.bones() if task == "pose" else (),
            min_keypoint_confidence=options.min_confidence,
        )
    for name, zone in config.zones.items():
        if zone.anchor != "box":
            raise ValueError(f"zones.{name}.anchor: {zone.anchor!r} needs a segmentation or "
                             f"pose model; {model.name} detects boxes only (use box)")
    return ObjectProcessor(labels, context, objects=config.objects, zones=config.zones,
                           masks=config.masks, tracking=config.tracking,
                           snapshots=config.snapshots)


class ClassifyStage:
    """``cameras[].classify`` with its own classifier, behind the camera's detector."""

    def __init__(self, classifier: Classifier, processor: ClassificationProcessor,
                 config: ClassifyConfig, object_classes: set[int] | None) -> None:
        self.classifier = classifier
        self.processor = processor
        self.config = config
        self.object_classes = object_classes

    def after_detection(self, image: npt.NDArray[np.uint8], objects: Any, t: float,
                        wall: float) -> list[Event]:
        """Run after the camera's model on a frame: classify the frame or its objects."""
        h, w = image.shape[:2]
        config = self.config
        if config.run == "frames":
            result = self.classifier.classify(image, config.crop_pixels(w, h))
            return self.processor.process(result, image, t, wall)
        if config.run != "objects" or not isinstance(objects, ObjectProcessor):
            return []
        results = []
        for track in objects.tracker.tracks:
            if not track.confirmed or track.det_index < 0:
                continue
            if self.object_classes is not None and track.class_id not in self.object_classes:
                continue
            region = grow_box(track.xyxy, config.padding, w, h)
            if region[2] - region[0] < 1 or region[3] - region[1] < 1:
                continue
            results.append((track.id, self.classifier.classify(image, region)))
        alive = {tr.id for tr in objects.tracker.tracks}
        return self.processor.objects(results, image, wall, alive)

    def on_request(self, image: npt.NDArray[np.uint8], wall: float) -> Event:
        """A classification event of ``image`` (or its crop), whatever the class."""
        h, w = image.shape[:2]
        result = self.classifier.classify(image, self.config.crop_pixels(w, h))
        return self.processor.event(result, image, wall)


def load_classify_stage(
    config: CameraConfig,
    camera_model: Any,
    detectors: dict[str, DetectorModelConfig],
    models_dir: Path,
    context: EventContext,
    labels_of: Any,
    cache: dict[str, Any] | None = None,
) -> ClassifyStage | None:
    """The classify stage of a camera, or None when it has none.

    ``labels_of(names)`` turns model class names into catalogue labels. Raises
    ``ModelLoadError`` or ``ValueError`` with a message naming the key at fault.
    """
    from agent.inference.classify import Classifier
    from agent.inference.loader import load_vision_model

    classify = config.classify
    if classify is None:
        return None
    camera_task = getattr(camera_model, "task", "detect")
    if classify.model is None:
        if camera_task == "classify" and classify.run == "request":
            classifier = camera_model
        elif camera_task == "classify":
            return None  # the camera's own model already classifies every frame
        else:
            raise ValueError(f"camera {config.id}: classify.model is required when the "
                             f"camera's model ({config.model}) is not a classifier")
    else:
        if classify.model not in detectors:
            have = ", ".join(sorted(detectors)) or "none"
            raise ValueError(f"camera {config.id}: classify.model {classify.model!r} is not in "
                             f"models.detectors (have: {have})")
        loaded = cache.get(classify.model) if cache is not None else None
        if loaded is None:
            loaded = load_vision_model(classify.model, detectors[classify.model], models_dir)
            if cache is not None:
                cache[classify.model] = loaded
        if not isinstance(loaded, Classifier):
            raise ModelLoadError(f"camera {config.id}: classify.model {classify.model} is not "
                                 f"a classifier (its outputs read as "
                                 f"{getattr(loaded, 'task', 'detect')})")
        classifier = loaded
    object_classes: set[int] | None = None
    if classify.run == "objects":
        names = {label.id: i for i, label in enumerate(labels_of(camera_model.labels))}
        unknown = [n for n in classify.objects if n not in names]
        if unknown:
            raise ValueError(f"camera {config.id}: classify.objects {unknown} are not labels of "
                             f"{config.model}")
        object_classes = {names[n] for n in classify.objects} if classify.objects else None
    ctx = EventContext(context.device, context.source, classifier.model_ref, context.use_case,
                       context.metadata)
    processor = ClassificationProcessor(labels_of(classifier.labels), ctx, classify,
                                        classifier.config.classify.top_k, config.snapshots)
    return ClassifyStage(classifier, processor, classify, object_classes)
