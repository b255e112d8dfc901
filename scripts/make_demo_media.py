#!/usr/bin/env python3
"""Generate the demo media: ``demo/street.avi`` for the camera, ``demo/sounds.wav`` for the
microphone.

The video (24 s, 640x480, 10 fps, MJPG):

scikit-image photos move over an empty street, things the default model really finds: a
person (the cameraman of ``skimage.data.camera()``) walking right, a motorbike
(``stereo_motorcycle()``) riding left, then a cup (``coffee()``) floating by. The scene is
empty at both ends, so ``loop: true`` replays it without a jump; the gaps are longer than
a track's ``max_disappeared`` at 5 fps, so every loop gives each object one ``new`` and one
``end``.

Idempotent: a sidecar ``street.avi.json`` records the recipe; when it matches, nothing is
rewritten. ``--force`` rewrites anyway.

The sound file (20 s, 16 kHz mono, loops): a quiet room, a sentence spoken by Debian's
``espeak-ng`` (left out, with a note, where it is not installed), a quiet gap, a rising and
falling siren, and quiet again, so each loop gives one ``speech`` and one ``siren`` sound event.

    .venv/bin/python scripts/make_demo_media.py [--out demo/street.avi] [--force]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.scenes import (  # noqa: E402
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


SOUND_RATE = 16_000


def _espeak(text: str) -> np.ndarray | None:
    """Speech as float samples at 16 kHz, or None without espeak-ng."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        print("make_demo_media: espeak-ng not installed; the demo sound has no speech "
              "(as root: apt-get install -y espeak-ng)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([exe, "-s", "150", "-w", str(path), text], check=True,
                       capture_output=True)
        with wave.open(str(path), "rb") as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    samples = pcm.astype(np.float32) / 32768.0
    if rate != SOUND_RATE:  # espeak-ng speaks at 22.05 kHz: resample linearly, it is a demo
        t = np.arange(int(len(samples) * SOUND_RATE / rate)) * rate / SOUND_RATE
        samples = np.interp(t, np.arange(len(samples)), samples).astype(np.float32)
    return samples


def _siren(seconds: float) -> np.ndarray:
    """A sawtooth sweeping 600-1300 Hz up and down once a second, like an emergency siren."""
    t = np.arange(int(seconds * SOUND_RATE)) / SOUND_RATE
    freq = 950 + 350 * np.sin(2 * np.pi * 1.0 * t)
    phase = np.cumsum(freq) / SOUND_RATE
    return (0.4 * (2 * (phase % 1.0) - 1)).astype(np.float32)


def make_sounds(out: Path, force: bool = False) -> bool:
    """Write the demo WAV unless it exists; True when written."""
    if out.is_file() and not force:
        return False
    rng = np.random.default_rng(0)

    def quiet(seconds: float) -> np.ndarray:
        return (0.001 * rng.standard_normal(int(seconds * SOUND_RATE))).astype(np.float32)

    speech = _espeak("Attention please. The loading dock door is open.")
    parts = [quiet(3.0)]
    if speech is not None:
        parts += [0.8 * speech / max(1e-6, float(np.abs(speech).max())), quiet(3.0)]
    parts += [_siren(4.0), quiet(4.0)]
    audio = np.concatenate(parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SOUND_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    print(f"make_demo_media: wrote {out} ({len(audio) / SOUND_RATE:.0f} s)")
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
    make_sounds(args.out.parent / "sounds.wav", args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
