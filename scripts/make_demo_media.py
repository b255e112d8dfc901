#!/usr/bin/env python3
"""Generate the demo camera video: ``demo/street.avi`` (24 s, 640x480, 10 fps, MJPG).

scikit-image photos move over an empty street, things the default model really finds: a
person (the cameraman of ``skimage.data.camera()``) walking right, a motorbike
(``stereo_motorcycle()``) riding left, then a cup (``coffee()``) floating by. The scene is
empty at both ends, so ``loop: true`` replays it without a jump; the gaps are longer than
a track's ``max_disappeared`` at 5 fps, so every loop gives each object one ``new`` and one
``end``.

Idempotent: a sidecar ``street.avi.json`` records the recipe; when it matches, nothing is
rewritten. ``--force`` rewrites anyway.

    .venv/bin/python scripts/make_demo_media.py [--out demo/street.avi] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.vision.media import (  # noqa: E402
    DEMO_CROSSINGS,
    DEMO_SECONDS,
    HEIGHT,
    WIDTH,
    demo_frames,
    write_video,
)

RECIPE_VERSION = 1


def recipe(fps: float) -> dict[str, object]:
    """Everything the video depends on; a change means the file is rewritten."""
    return {
        "version": RECIPE_VERSION,
        "fps": fps,
        "seconds": DEMO_SECONDS,
        "size": [WIDTH, HEIGHT],
        "crossings": [dataclasses.asdict(c) for c in DEMO_CROSSINGS],
    }


def make(out: Path, fps: float = 10.0, force: bool = False) -> bool:
    """Write the demo video unless an identical one exists; True when written."""
    stamp = out.with_name(out.name + ".json")
    want = recipe(fps)
    if not force and out.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text(encoding="utf-8")) == want:
                return False
        except (OSError, ValueError):
            pass  # unreadable stamp: rewrite
    frames = write_video(out, demo_frames(fps), fps)
    stamp.write_text(json.dumps(want, indent=2) + "\n", encoding="utf-8")
    print(f"make_demo_media: wrote {out} ({frames} frames, {frames / fps:.0f} s)")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "demo" / "street.avi")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = parser.parse_args()
    if not make(args.out, args.fps, args.force):
        print(f"make_demo_media: {args.out} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
