"""Opens a vision model (``models.detectors.<name>``) as the task its config or outputs say."""

from __future__ import annotations

from pathlib import Path

from agent.inference.classify import Classifier
from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.pose import PoseEstimator
from agent.inference.segment import Segmenter
from agent.inference.session import ModelLoadError
from agent.inference.tasks import TASK_LAYOUTS, OutputsMismatch


def load_vision_model(
    name: str, config: DetectorModelConfig, models_dir: Path
) -> Detector | Classifier | Segmenter | PoseEstimator:
    """The model named ``name``, loaded as the task its config or its outputs say.

    Detection is tried first under ``type: auto`` (the common case loads once); a model that
    is no detector is then opened as the task its metadata or output shapes fit. Raises
    ``ModelLoadError`` naming the model: the detector's complaint when the outputs fit no
    other task, else the complaint of the task they fit (labels that do not match).
    """
    classes: dict[str, type[Classifier] | type[Segmenter] | type[PoseEstimator]] = {
        "classify": Classifier, "segment": Segmenter, "pose": PoseEstimator,
    }
    if config.type in classes:
        return classes[config.type](name, config, models_dir)
    if config.type != "auto":
        return Detector(name, config, models_dir)
    try:
        return Detector(name, config, models_dir)
    except ModelLoadError as detect_error:
        # Which task fits is cheap to tell from the probe; try them in the likeliest order.
        for cls in classes.values():
            try:
                return cls(name, config, models_dir)
            except OutputsMismatch:
                continue
            except ModelLoadError as exc:
                if str(exc) == str(detect_error):
                    raise  # not about the outputs: a missing file, unreadable labels
                # The outputs have this task's shape; what else is wrong is the useful news.
                raise exc from detect_error
        if "unsupported output layout" in str(detect_error):
            raise ModelLoadError(f"{detect_error}; or a task: {TASK_LAYOUTS}") from detect_error
        raise
