"""Instance segmentation, Ultralytics style: boxes, classes and an outline per object.

The model has two outputs: ``[1, 4+C+M, N]`` (cx, cy, w, h, C class scores and M mask
coefficients per candidate; the transposed ``[1, N, 4+C+M]`` is accepted) and prototypes
``[1, M, H/4, W/4]``. After score filtering and class-aware NMS on the boxes, an object's
mask is ``sigmoid(coefficients x prototypes) > segment.mask_threshold``, cropped to its box.

The mask is computed only inside the object's box, and straight in original-frame pixels:
one affine warp per object maps each frame pixel's centre through the letterbox to the
prototype grid (bilinear, ``align_corners=False`` as Ultralytics upsamples). Thresholding
the interpolated logit at ``logit(mask_threshold)`` equals thresholding the probability,
because the sigmoid is monotonic. The outline is the mask's largest external contour,
simplified (Douglas-Peucker) to at most ``segment.max_points`` points, with vertices at
pixel centres; the area is the mask's pixel count. No full-size mask leaves this module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference.letterbox import Letterbox, letterbox, unletterbox_boxes
from agent.inference.session import ModelLoadError
from agent.inference.shapes import ShapeDetections, channels_first, select_candidates
from agent.inference.tasks import OutputsMismatch, Shape, TaskModel, segment_geometry

FloatArray = npt.NDArray[np.float32]

_MIN_EPSILON = 0.75
"""Douglas-Peucker tolerance (pixels) always applied: it turns pixel staircases into lines."""


def simplify_contour(contour: npt.NDArray[Any], max_points: int) -> FloatArray:
    """``[P, 2]`` polygon from an OpenCV contour, at most ``max_points`` points."""
    import cv2

    epsilon = _MIN_EPSILON
    approx = cv2.approxPolyDP(contour, epsilon, True)
    while len(approx) > max_points:
        epsilon *= 1.5
        approx = cv2.approxPolyDP(contour, epsilon, True)
    return np.asarray(approx, dtype=np.float32).reshape(-1, 2)


def mask_outline(mask: npt.NDArray[np.bool_], max_points: int) -> FloatArray:
    """Outline of the largest connected part of ``mask``, in the mask's pixel-centre
    coordinates; ``[0, 2]`` when the mask is empty."""
    import cv2

    contours, _ = cv2.findContours(mask.view(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((0, 2), dtype=np.float32)
    largest = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    return simplify_contour(largest, max_points) + np.float32(0.5)


def decode_masks(
    coefficients: FloatArray,
    protos: FloatArray,
    boxes: FloatArray,
    input_size: tuple[int, int],
    box: Letterbox,
    mask_threshold: float = 0.5,
    max_points: int = 64,
) -> tuple[list[FloatArray], FloatArray]:
    """Outlines (frame pixels) and mask areas of objects.

    ``coefficients``: ``[K, M]``; ``protos``: ``[M, h, w]``; ``boxes``: ``[K, 4]`` xyxy in
    frame pixels (already unletterboxed); ``box``: how the frame was letterboxed into
    ``input_size`` = (width, height).
    """
    import cv2

    k, m = coefficients.shape
    _, proto_h, proto_w = protos.shape
    rx, ry = proto_w / input_size[0], proto_h / input_size[1]
    sx, sy = box.scale
    px, py = box.pad
    height, width = box.orig_shape
    floor = math.log(mask_threshold / (1.0 - mask_threshold))
    outlines: list[FloatArray] = []
    areas = np.zeros(k, dtype=np.float32)
    for i in range(k):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        c0, r0 = max(0, math.floor(x1)), max(0, math.floor(y1))
        c1, r1 = min(width, math.ceil(x2)), min(height, math.ceil(y2))
        if c1 <= c0 or r1 <= r0:
            outlines.append(np.zeros((0, 2), dtype=np.float32))
            continue
        # Frame pixel (c, r) has its centre at (c + 0.5, r + 0.5); through the letterbox it
        # lands at (c + 0.5) * sx + px input pixels, and on the prototype grid (whose pixel
        # centres sit at j + 0.5) at that times rx, minus 0.5 as an index.
        u_first = ((c0 + 0.5) * sx + px) * rx - 0.5
        v_first = ((r0 + 0.5) * sy + py) * ry - 0.5
        # Only the prototype cells under the box (plus one for the interpolation) are mixed:
        # a 20-object frame then costs a fraction of the full [K, M] x [M, h*w] product.
        u0 = max(0, math.floor(u_first) - 1)
        v0 = max(0, math.floor(v_first) - 1)
        u1 = min(proto_w, math.ceil(((c1 - 0.5) * sx + px) * rx - 0.5) + 2)
        v1 = min(proto_h, math.ceil(((r1 - 0.5) * sy + py) * ry - 0.5) + 2)
        if u1 <= u0 or v1 <= v0:
            outlines.append(np.zeros((0, 2), dtype=np.float32))
            continue
        cells = protos[:, v0:v1, u0:u1].reshape(m, -1)
        logits = (coefficients[i] @ cells).reshape(v1 - v0, u1 - u0).astype(np.float32)
        warp = np.array([
            [sx * rx, 0.0, u_first - u0],
            [0.0, sy * ry, v_first - v0],
        ], dtype=np.float64)
        region = cv2.warpAffine(logits, warp, (c1 - c0, r1 - r0),
                                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REPLICATE)
        mask = region > floor
        # Cropped to the box: only pixels whose centre lies inside it.
        cols = np.arange(c0, c1, dtype=np.float32) + 0.5
        rows = np.arange(r0, r1, dtype=np.float32) + 0.5
        mask &= ((rows >= y1) & (rows <= y2))[:, None] & ((cols >= x1) & (cols <= x2))[None, :]
        areas[i] = float(np.count_nonzero(mask))
        outline = mask_outline(np.ascontiguousarray(mask), max_points)
        outline[:, 0] += c0
        outline[:, 1] += r0
        outlines.append(outline)
    return outlines, areas


class Segmenter(TaskModel):
    """Runs one Ultralytics-style segmentation model; objects come back in frame pixels."""

    task = "segment"

    def _check(self, shapes: list[Shape]) -> None:
        geometry = segment_geometry(shapes)
        described = ", ".join(str(list(s)) for s in shapes)
        if geometry is None:
            raise OutputsMismatch(
                f"model {self.name}: outputs {described} are not [1, 4+C+M, N] plus "
                "prototypes [1, M, H/4, W/4]"
            )
        channels, masks = geometry
        classes = channels - 4 - masks
        if classes != len(self.labels):
            raise ModelLoadError(
                f"model {self.name}: segmentation outputs {described} predict {classes} "
                f"classes but labels {self.config.labels!r} has {len(self.labels)} names"
            )
        self._classes = classes
        self._table_index = next(i for i, s in enumerate(shapes) if len(s) == 3)
        self._proto_index = 1 - self._table_index

    def detect(self, frame_bgr: npt.NDArray[np.uint8]) -> ShapeDetections:
        """Objects in ``frame_bgr`` ((H, W, 3) BGR) with boxes, outlines and mask areas."""
        if frame_bgr.ndim != 3 or frame_bgr.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) BGR frame, got shape {list(frame_bgr.shape)}")
        image, box = letterbox(frame_bgr, self.input_size)
        outputs = self.run(image)
        return self.decode(outputs, box)

    def decode(self, outputs: list[np.ndarray], box: Letterbox) -> ShapeDetections:
        """Raw outputs -> objects in frame pixels (split from ``detect`` for benchmarks)."""
        config = self.config
        table = channels_first(outputs[self._table_index])
        protos = np.asarray(outputs[self._proto_index], dtype=np.float32)[0]
        found, columns = select_candidates(table, self._classes, config.score_threshold,
                                           config.iou_threshold)
        xyxy = unletterbox_boxes(found.xyxy, box.scale, box.pad, box.orig_shape)
        keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        xyxy, columns = xyxy[keep], columns[keep]
        coefficients = np.ascontiguousarray(table[4 + self._classes:, columns].T)
        outlines, areas = decode_masks(
            coefficients, protos, xyxy, self.input_size, box,
            config.segment.mask_threshold, config.segment.max_points,
        )
        return ShapeDetections(xyxy, found.confidence[keep], found.class_id[keep],
                               outlines=tuple(outlines), mask_area=areas)
