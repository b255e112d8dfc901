"""Record what the default model sees of a person walking out of the frame, as JSON.

    .venv/bin/python -m tests.vision.record_walkout [OUT]

The person is scikit-image's "camera" photo (a man with a camera on a tripod), 280 px high,
pasted on the test background and moved right by 8 px per frame until wholly out of the frame, then
a few empty frames. Each frame goes through the real YOLOv3-tiny ``Detector``; every
detection (label, score, box in frame pixels) is written, so tracking tests replay real model
output without running the model. The default writes ``tests/vision/fixtures/walkout.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.fetch import fetch_models
from scripts.scenes import HEIGHT, WIDTH, background, paste, sprite

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "vision" / "fixtures" / "walkout.json"
FPS = 5.0
PERSON_HEIGHT = 280
"""At this size YOLOv3-tiny also returns a second person box inside the first while the man
is partly out of the frame (IoU 0.24-0.34 with the whole box, scores up to 0.7)."""
START_X, STEP = 300, 8
EMPTY_FRAMES = 8


def frames() -> list[np.ndarray]:
    person = sprite("person", PERSON_HEIGHT)
    base = background()
    out = []
    x = START_X
    while x < WIDTH:
        out.append(paste(base.copy(), person, x, HEIGHT - person.shape[0] - 8))
        x += STEP
    out += [base.copy() for _ in range(EMPTY_FRAMES)]
    return out


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else OUT
    models = REPO / "models"
    fetch_models(models, ["yolov3-tiny-coco"], quiet=True)
    detector = Detector("yolov3-tiny-coco",
                        DetectorModelConfig(path=Path("yolov3-tiny-coco.onnx")), models)
    recorded = []
    for i, frame in enumerate(frames()):
        found = detector.detect(frame)
        recorded.append({
            "t": round(i / FPS, 3),
            "detections": [
                {"label": detector.labels[int(c)], "score": round(float(s), 4),
                 "xyxy": [round(float(v), 1) for v in box]}
                for box, s, c in zip(found.xyxy, found.confidence, found.class_id, strict=True)
            ],
        })
    document = {
        "about": "YOLOv3-tiny (edge-agent default, pad 127.5) on a person walking out of a "
                 f"{WIDTH}x{HEIGHT} frame, {STEP} px a frame at {FPS:g} fps; made by "
                 "tests/vision/record_walkout.py",
        "width": WIDTH, "height": HEIGHT, "fps": FPS, "frames": recorded,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    print(f"{out}: {len(recorded)} frames, "
          f"{sum(len(f['detections']) for f in recorded)} detections")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
