"""Generated test media: scikit-image photos moving over a static, empty background.

The photos ship inside the scikit-image wheel (no download), and the default model really
finds what they show: the motorbike of ``stereo_motorcycle()`` (about 0.9 at 320 px wide on
this background), the cameraman of ``camera()`` (a person, 0.99 at 320 px high) and the cup of
``coffee()`` (0.7-0.8, sometimes called a toilet). The background holds nothing the model
calls an object. Everything is deterministic (fixed seeds), so a video written twice is the
same video.

Used by ``scripts/make_demo_media.py`` (the demo), the vision benchmark and the tests; it
lives under scripts/ so that the demo does not depend on the test tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

WIDTH, HEIGHT = 640, 480


def background(width: int = WIDTH, height: int = HEIGHT, seed: int = 0) -> Image:
    """A plain street: sky gradient over asphalt, a kerb line and fine sensor-like noise."""
    rng = np.random.default_rng(seed)
    horizon = height // 2
    img = np.empty((height, width, 3), dtype=np.float32)
    sky = np.linspace(205.0, 150.0, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = sky * np.array([1.0, 0.95, 0.85], dtype=np.float32)
    img[horizon:] = np.array([88.0, 90.0, 95.0], dtype=np.float32)
    img[horizon:horizon + 6] = 150.0
    img += rng.normal(0.0, 6.0, img.shape).astype(np.float32)
    img = cv2.GaussianBlur(img, (3, 3), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def _bgr(photo: npt.NDArray[np.uint8]) -> Image:
    if photo.ndim == 2:
        photo = np.stack([photo] * 3, axis=-1)
    return np.ascontiguousarray(photo[..., ::-1])


@cache
def _photo(name: str) -> Image:
    from skimage import data

    if name == "motorbike":
        left, _right, _disp = data.stereo_motorcycle()
        return _bgr(left)
    if name == "person":
        return _bgr(data.camera())[0:512, 60:360]
    if name == "cup":
        return _bgr(data.coffee())[10:320, 140:440]
    raise KeyError(f"no sprite {name!r}; have motorbike, person, cup")


SPRITE_SIZES = {"motorbike": ("width", 320), "person": ("height", 320), "cup": ("height", 320)}
"""Sizes at which the default model finds each sprite reliably on ``background()``."""


def sprite(name: str, size: int | None = None) -> Image:
    """A photo crop of ``name`` (motorbike, person, cup), scaled to a size the model finds."""
    photo = _photo(name)
    side, default = SPRITE_SIZES[name]
    size = size or default
    h, w = photo.shape[:2]
    dsize = (size, round(h * size / w)) if side == "width" else (round(w * size / h), size)
    return np.asarray(cv2.resize(photo, dsize, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def paste(frame: Image, item: Image, x: int, y: int) -> Image:
    """``item`` pasted with its top-left at (x, y), clipped to the frame (in place)."""
    fh, fw = frame.shape[:2]
    ih, iw = item.shape[:2]
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(fw, x + iw), min(fh, y + ih)
    if x1 > x0 and y1 > y0:
        frame[y0:y1, x0:x1] = item[y0 - y:y1 - y, x0 - x:x1 - x]
    return frame


@dataclass(frozen=True)
class Crossing:
    """One object moving across the frame: enters at ``start_s``, takes ``duration_s``.

    ``x_from``/``x_to`` are the sprite's left edge at the start and end (pixels); ``y`` its
    top, default: standing on the bottom of the frame.
    """

    name: str
    start_s: float
    duration_s: float
    x_from: int
    x_to: int
    y: int | None = None
    size: int | None = None

    def position(self, t: float, height: int, item: Image) -> tuple[int, int] | None:
        if not self.start_s <= t < self.start_s + self.duration_s:
            return None
        f = (t - self.start_s) / self.duration_s
        x = round(self.x_from + (self.x_to - self.x_from) * f)
        y = self.y if self.y is not None else height - item.shape[0] - 8
        return x, y


def scene_frames(
    crossings: Sequence[Crossing],
    seconds: float,
    fps: float,
    width: int = WIDTH,
    height: int = HEIGHT,
    noise_seed: int | None = 1,
) -> Iterator[Image]:
    """Frames of ``background()`` with each crossing's sprite where it is at that time.

    ``noise_seed`` adds faint per-frame noise (a real sensor never repeats a frame exactly;
    the motion gate must not mistake it for motion). None: identical static frames.
    """
    base = background(width, height)
    items = {c: sprite(c.name, c.size) for c in crossings}
    rng = np.random.default_rng(noise_seed) if noise_seed is not None else None
    for i in range(round(seconds * fps)):
        t = i / fps
        frame = base.copy()
        for crossing, item in items.items():
            where = crossing.position(t, height, item)
            if where is not None:
                paste(frame, item, *where)
        if rng is not None:
            noise = rng.integers(-3, 4, size=frame.shape, dtype=np.int16)
            frame = np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        yield frame


def write_video(path: Path, frames: Iterable[Image], fps: float) -> int:
    """Write frames as MJPG in an AVI (what OpenCV writes everywhere); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".part" + path.suffix)
    writer: cv2.VideoWriter | None = None
    count = 0
    try:
        for frame in frames:
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
                if not writer.isOpened():
                    raise RuntimeError(f"OpenCV cannot write MJPG/AVI to {tmp}")
            writer.write(frame)
            count += 1
    finally:
        if writer is not None:
            writer.release()
    tmp.replace(path)
    return count


def write_images(folder: Path, frames: Iterable[Image], ext: str = ".jpg") -> int:
    """Write frames as numbered images in ``folder``; returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"frame-{i:05d}{ext}"), frame)
        count += 1
    return count


@dataclass(frozen=True)
class CrossingVideo:
    """A written crossing video and what is in it."""

    path: Path
    fps: float
    frames: int
    object_from_s: float
    object_to_s: float


def crossing_video(
    path: Path,
    name: str = "motorbike",
    fps: float = 10.0,
    still_before_s: float = 2.0,
    crossing_s: float = 5.0,
    still_after_s: float = 5.0,
) -> CrossingVideo:
    """One ``name`` entering on the left and leaving on the right, empty scene around it."""
    width = sprite(name).shape[1]
    crossing = Crossing(name, still_before_s, crossing_s, x_from=-width // 3,
                        x_to=WIDTH - 2 * width // 3)
    seconds = still_before_s + crossing_s + still_after_s
    count = write_video(path, scene_frames([crossing], seconds, fps), fps)
    return CrossingVideo(path, fps, count, still_before_s, still_before_s + crossing_s)


def static_video(path: Path, seconds: float = 10.0, fps: float = 10.0) -> int:
    """An empty scene with sensor noise only; returns the frame count."""
    return write_video(path, scene_frames([], seconds, fps), fps)


DEMO_CROSSINGS = (
    Crossing("person", 2.0, 7.0, x_from=-120, x_to=WIDTH - 60),
    Crossing("motorbike", 10.0, 4.0, x_from=WIDTH, x_to=-320),
    Crossing("cup", 15.5, 6.0, x_from=-100, x_to=WIDTH - 100, y=60),
)
"""A person walking right, a motorbike riding left, then a cup floating by (24 s)."""

DEMO_SECONDS = 24.0


def demo_frames(fps: float = 10.0) -> Iterator[Image]:
    """The demo scene: empty at both ends, so it loops without a jump."""
    return scene_frames(DEMO_CROSSINGS, DEMO_SECONDS, fps)
