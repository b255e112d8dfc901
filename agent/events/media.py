"""Images and audio clips as ``Media``: encoded once, carried inline as base64.

Whether media then travel inline or as binary payloads on their own topic is decided at
delivery time (``mqtt.media_transport``), so event builders never care.
"""

from __future__ import annotations

import base64
import hashlib
import io
import wave
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.events.schema import Media


def _media(role: str, content_type: str, blob: bytes, **extra: object) -> Media:
    return Media(
        role=role,
        content_type=content_type,
        bytes=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
        data=base64.b64encode(blob).decode("ascii"),
        **extra,  # type: ignore[arg-type]
    )


def jpeg_media(
    frame_bgr: npt.NDArray[np.uint8], role: str, quality: int = 80, max_width: int | None = None
) -> Media:
    """Encode a BGR frame as JPEG, shrunk to ``max_width`` when wider."""
    import cv2

    image: npt.NDArray[np.integer[Any] | np.floating[Any]] = frame_bgr
    h, w = image.shape[:2]
    if max_width is not None and w > max_width:
        scale = max_width / w
        image = cv2.resize(image, (max_width, max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return _media(role, "image/jpeg", buf.tobytes(), width=w, height=h)


def wav_bytes(samples: npt.NDArray[np.floating] | npt.NDArray[np.int16], sample_rate: int) -> bytes:
    """Mono 16-bit PCM WAV of float samples in [-1, 1] (or int16 samples)."""
    pcm = samples if samples.dtype == np.int16 else (
        np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return out.getvalue()


def wav_media(
    samples: npt.NDArray[np.floating] | npt.NDArray[np.int16], sample_rate: int, role: str = "clip"
) -> Media:
    """A mono WAV clip as ``Media``."""
    blob = wav_bytes(samples, sample_rate)
    return _media(role, "audio/wav", blob, sample_rate=sample_rate,
                  duration_s=round(len(samples) / sample_rate, 3))
