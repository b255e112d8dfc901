"""Letterbox a frame into a model's input and map boxes back to the frame.

The frame is resized keeping its aspect ratio and centred on a grey (114) canvas, as the
YOLO family was trained. Coordinates are continuous pixel edges: a point ``x`` in the frame
lands on ``x * scale_x + pad_x`` in the model input, and ``unletterbox_boxes`` inverts that
exactly, with the per-axis scale that rounding the resized size to whole pixels produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# cv2 is imported inside letterbox, not here: agent.config imports the detector (for its
# model config), which imports this module, and an agent without cameras should not load
# OpenCV.

PAD_VALUE = 114
"""Grey the YOLO models saw around letterboxed training images."""


@dataclass(frozen=True)
class Letterbox:
    """Where a frame went inside the model input.

    ``scale``: (x, y) factors from frame to input pixels; ``pad``: (left, top) offsets in
    input pixels; ``orig_shape``: the frame's (height, width).
    """

    scale: tuple[float, float]
    pad: tuple[int, int]
    orig_shape: tuple[int, int]


def letterbox_geometry(orig_shape: tuple[int, ...], size: tuple[int, int]) -> Letterbox:
    """Where a frame of ``orig_shape`` (height, width, ...) lands in an input of ``size``
    = (width, height): the largest aspect-preserving fit, centred."""
    dst_w, dst_h = size
    src_h, src_w = orig_shape[:2]
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"cannot letterbox an empty frame of shape {list(orig_shape)}")
    ratio = min(dst_w / src_w, dst_h / src_h)
    new_w = max(1, min(dst_w, round(src_w * ratio)))
    new_h = max(1, min(dst_h, round(src_h * ratio)))
    return Letterbox(
        scale=(new_w / src_w, new_h / src_h),
        pad=((dst_w - new_w) // 2, (dst_h - new_h) // 2),
        orig_shape=(src_h, src_w),
    )


def letterbox(
    frame: npt.NDArray[np.uint8], size: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """Resize ``frame`` (H, W, C) into ``size`` = (width, height), keeping aspect, padded 114.

    Returns the padded image and the mapping needed by ``unletterbox_boxes``.
    """
    import cv2

    box = letterbox_geometry(frame.shape, size)
    dst_w, dst_h = size
    src_h, src_w = box.orig_shape
    new_w, new_h = round(src_w * box.scale[0]), round(src_h * box.scale[1])
    if (new_w, new_h) != (src_w, src_h):
        # INTER_LINEAR as the YOLO exporters use; INTER_AREA is smoother when shrinking but
        # costs 14 ms instead of 0.6 ms for 1080p -> 416 on a 2-core x86.
        resized = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    else:
        resized = frame
    left, top = box.pad
    image = cv2.copyMakeBorder(
        resized,
        top,
        dst_h - new_h - top,
        left,
        dst_w - new_w - left,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE,) * (frame.shape[2] if frame.ndim == 3 else 1),
    )
    return np.asarray(image, dtype=np.uint8), box


def unletterbox_boxes(
    xyxy: npt.NDArray[np.float32],
    scale: tuple[float, float],
    pad: tuple[int, int],
    orig_shape: tuple[int, int],
) -> npt.NDArray[np.float32]:
    """Map ``[N, 4]`` boxes from model-input pixels back to the frame, clipped to it.

    ``orig_shape`` is the frame's (height, width), as in ``ndarray.shape``.
    """
    out = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4).copy()
    sx, sy = scale
    px, py = pad
    out[:, 0::2] = (out[:, 0::2] - px) / sx
    out[:, 1::2] = (out[:, 1::2] - py) / sy
    height, width = orig_shape
    np.clip(out[:, 0::2], 0, width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, height, out=out[:, 1::2])
    return out


def to_tensor(
    image_bgr: npt.NDArray[np.uint8],
    *,
    rgb: bool = True,
    scale: float = 1 / 255,
    out: npt.NDArray[np.floating] | None = None,
) -> npt.NDArray[np.floating]:
    """``[1, 3, H, W]`` tensor from an (H, W, 3) BGR image: channel order, scale, NCHW.

    ``out`` (float32 or float16, ``[1, 3, H, W]``) is filled in place when given, so a
    detector reuses one buffer per frame instead of allocating 5 MB each time.
    """
    height, width = image_bgr.shape[:2]
    if out is None:
        out = np.empty((1, 3, height, width), dtype=np.float32)
    chw = image_bgr.transpose(2, 0, 1)
    if rgb:
        chw = chw[::-1]
    # One fused multiply-and-cast straight into the buffer: ~2.7 ms at 640x640 where
    # cv2.dnn.blobFromImage or astype-then-transpose take 7-9 ms.
    np.multiply(chw, out.dtype.type(scale), out=out[0], casting="unsafe")
    return out
