"""Camera readers on OpenCV: V4L2 devices, RTSP and other FFmpeg streams, video files, and
folders of images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.sources import native_log
from agent.sources.config import CameraConfig
from agent.sources.reader import CameraError, FrameReader

# cv2 is imported inside the readers, not here: the daemon imports this module (through
# agent.sources.camera) whatever its sources, and an agent without cameras should not load
# OpenCV (~17 MB of RSS).

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")



class OpenCvReader(FrameReader):
    """Devices, RTSP, FFmpeg streams and video files through ``cv2.VideoCapture``."""

    def __init__(self, config: CameraConfig) -> None:
        import cv2

        kind = config.camera_type
        timeout_ms = int(config.timeout_s * 1000)
        params: list[int] = []
        target: str | int
        if kind == "device":
            target = config.device if config.device is not None else (config.url or "")
            api = cv2.CAP_V4L2
        elif kind == "file":
            target = str(Path(config.url or "").expanduser())
            if not Path(target).is_file():
                raise CameraError(f"file {target} not found", permanent=True)
            api = cv2.CAP_ANY
        else:
            target = config.url or ""
            api = cv2.CAP_FFMPEG
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        # What OpenCV and FFmpeg print while opening names the cause (401, 404, refused).
        self._native = native_log.current()
        self._mark = self._native.mark() if self._native is not None else 0
        self._cap = (cv2.VideoCapture(target, api, params) if params
                     else cv2.VideoCapture(target, api))
        if not self._cap.isOpened():
            self._cap.release()
            what = {"device": "device", "file": "file"}.get(kind, "stream")
            why = native_log.cause(self._native.since(self._mark)) if self._native else None
            if kind == "device" and isinstance(target, str) and not Path(target).exists():
                why = "it does not exist (unplugged?)"
            raise CameraError(
                f"cannot open {what} {config.display_url}"
                + (" (not a video OpenCV can decode)" if kind == "file" else "")
                + (f": {why}" if why else ""),
                permanent=kind == "file",
            )
        if kind == "device":
            # Fewer driver buffers: the frame we grab is closer to now.
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = fps if 0.5 <= fps <= 240 else None

    def grab(self) -> bool:
        return bool(self._cap.grab())

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        ok, image = self._cap.retrieve()
        if not ok or image is None or not image.size:
            return None
        return np.asarray(image, dtype=np.uint8)

    def close(self) -> None:
        self._cap.release()

    def failure(self) -> str:
        why = native_log.cause(self._native.since(self._mark, 0.05)) if self._native else None
        return why or "no frame (the stream ended, or nothing came within timeout_s)"

    def damage(self) -> tuple[int, str] | None:
        import cv2

        total = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        read = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)
        errors = [line for line in (self._native.since(self._mark, 0.05) if self._native
                                    else []) if native_log.is_decode_error(line)]
        if 0 < read < total:
            return total - read, f"only {read} of {total} frames could be read"
        if errors:
            return len(errors), f"{len(errors)} decode errors"
        return None


class FolderReader(FrameReader):
    """The images of a folder in name order, one frame each."""

    def __init__(self, config: CameraConfig) -> None:
        folder = Path(config.url or "").expanduser()
        if not folder.is_dir():
            raise CameraError(f"folder {folder} not found", permanent=True)
        self._files = sorted(p for p in folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._files:
            raise CameraError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                              permanent=True)
        self._index = -1
        self.native_fps = config.fps or 1.0

    def grab(self) -> bool:
        self._index += 1
        return self._index < len(self._files)

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        import cv2

        path = self._files[self._index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("cannot read image %s; skipping it", path)
            return None
        return np.asarray(image, dtype=np.uint8)
