"""Events with real JPEG images, for the media store tests."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timezone

import cv2
import numpy as np

from agent.events.schema import DeviceRef, Event, Media, SourceRef


def jpeg(width: int, height: int, seed: int, quality: int = 95) -> bytes:
    """A JPEG of noise: hardly compressible, so ``width * height`` sets its size."""
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buf)


def image(role: str, data: bytes, width: int, height: int) -> Media:
    return Media(role=role, content_type="image/jpeg", bytes=len(data),
                 sha256=hashlib.sha256(data).hexdigest(),
                 data=base64.b64encode(data).decode(), width=width, height=height)


def snapshot_event(blobs: dict[str, bytes], source: str = "cam", width: int = 64,
                   height: int = 48) -> Event:
    """A snapshot event of ``source`` carrying ``blobs`` (role -> JPEG bytes) inline."""
    return Event(kind="snapshot", use_case="default", timestamp=datetime.now(timezone.utc),
                 device=DeviceRef(id="dev"),
                 source=SourceRef(id=source, kind="camera", name=source),
                 images=[image(role, data, width, height) for role, data in blobs.items()])
