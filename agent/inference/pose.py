"""Keypoints (pose), Ultralytics style: boxes, classes and named keypoints per object.

The model has one output ``[1, 4+C+K*3, N]`` (cx, cy, w, h, C class scores, then x, y,
confidence for each of K keypoints, all in model-input pixels; the transposed layout is
accepted). ``pose.keypoints`` names the K keypoints in order (the 17 COCO ones by default).
Keypoint confidences are taken as they are when they lie in 0..1 (Ultralytics exports apply
the sigmoid in the graph); otherwise the sigmoid is applied here.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.inference.letterbox import Letterbox, letterbox, unletterbox_boxes
from agent.inference.session import ModelLoadError
from agent.inference.shapes import (
    ShapeDetections,
    channels_first,
    select_candidates,
    unletterbox_points,
)
from agent.inference.tasks import OutputsMismatch, Shape, TaskModel, pose_classes


class PoseEstimator(TaskModel):
    """Runs one pose model; objects and their keypoints come back in frame pixels."""

    task = "pose"

    def _check(self, shapes: list[Shape]) -> None:
        names = self.config.pose.keypoints
        classes = pose_classes(shapes, len(names))
        described = ", ".join(str(list(s)) for s in shapes)
        if classes is None:
            raise OutputsMismatch(
                f"model {self.name}: outputs {described} are not [1, 4+C+K*3, N] with "
                f"K = {len(names)} keypoints (pose.keypoints)"
            )
        # A one-class pose model may keep the COCO labels: its class 0 is COCO's person.
        one_class_coco = classes == 1 and self.config.labels == "coco"
        if classes != len(self.labels) and not one_class_coco:
            raise ModelLoadError(
                f"model {self.name}: pose outputs {described} with {len(names)} keypoints "
                f"predict {classes} classes but labels {self.config.labels!r} has "
                f"{len(self.labels)} names"
            )
        self._classes = classes

    def detect(self, frame_bgr: npt.NDArray[np.uint8]) -> ShapeDetections:
        """Objects in ``frame_bgr`` ((H, W, 3) BGR) with boxes and keypoints."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR frame, got shape {list(frame_bgr.shape)}")
        image, box = letterbox(frame_bgr, self.input_size)
        return self.decode(self.run(image), box)

    def decode(self, outputs: list[np.ndarray], box: Letterbox) -> ShapeDetections:
        """Raw outputs -> objects in frame pixels."""
        config = self.config
        names = config.pose.keypoints
        table = channels_first(outputs[0])
        found, columns = select_candidates(table, self._classes, config.score_threshold,
                                           config.iou_threshold)
        xyxy = unletterbox_boxes(found.xyxy, box.scale, box.pad, box.orig_shape)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        columns = columns[keep]
        k = len(names)
        raw = table[4 + self._classes:, columns].reshape(k, 3, len(columns))
        keypoints = np.ascontiguousarray(raw.transpose(2, 0, 1), dtype=np.float32)
        keypoints[..., :2] = unletterbox_points(keypoints[..., :2], box.scale, box.pad,
                                                box.orig_shape)
        conf = keypoints[..., 2]
        if conf.size and (conf.min() < 0.0 or conf.max() > 1.0):
            keypoints[..., 2] = 1.0 / (1.0 + np.exp(-conf))
        return ShapeDetections(xyxy[keep], found.confidence[keep], found.class_id[keep],
                               keypoints=keypoints, keypoint_names=tuple(names))
