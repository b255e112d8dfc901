"""Segmentation post-processing (masks -> outlines) beside a real model's own inference.

The measure is ``Segmenter.decode`` on an Ultralytics-sized output: ``[1, 116, 8400]`` (80
classes, 32 mask coefficients) with 20 objects of 40 to 260 input pixels and prototypes
``[1, 32, 160, 160]`` of smooth random blobs, mapped to a 1280x720 frame: score filter, NMS,
coefficients x prototypes, one warp per box, threshold, contour, simplification.

The reference is ``session.run`` of the lightest real detector we ship (YOLOv3-tiny at
416x416, what ``edge-agent models fetch`` builds): an Ultralytics segmentation model at
640x640 (yolov8n-seg: about 12 GFLOPs against YOLOv3-tiny's 5.6 at 416) takes longer, so
post-processing below this reference is below any such model's inference here.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from agent.config import ModelsConfig
from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.fetch import YOLOV3_TINY_ONNX, fetch_models
from agent.inference.letterbox import letterbox, letterbox_geometry, to_tensor
from agent.inference.segment import Segmenter
from scripts.benchmarks import Row

SECTION = "segmentation"
INSTANCES = 20
CLASSES = 80
MASKS = 32
CANDIDATES = 8400


def seg_outputs(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """An Ultralytics-sized segmentation output with ``INSTANCES`` objects."""
    rng = np.random.default_rng(seed)
    table = np.zeros((4 + CLASSES + MASKS, CANDIDATES), np.float32)
    table[0:2] = rng.uniform(0, 640, (2, CANDIDATES))
    table[2:4] = rng.uniform(8, 40, (2, CANDIDATES))
    table[4:4 + CLASSES] = rng.uniform(0, 0.05, (CLASSES, CANDIDATES))
    cols = rng.choice(CANDIDATES, INSTANCES, replace=False)
    # Objects on a 5x4 grid, so NMS keeps all 20; sizes vary from 40 to 260 input pixels.
    for n, col in enumerate(cols):
        cx, cy = 70 + (n % 5) * 125, 140 + (n // 5) * 120
        size = 40 + 220 * (n / (INSTANCES - 1))
        table[0:4, col] = [cx, cy, min(size, 120), min(size, 115)]
        table[4 + n % CLASSES, col] = 0.9
        table[4 + CLASSES:, col] = rng.normal(0, 1, MASKS)
    low = rng.normal(0, 3, (MASKS, 20, 20)).astype(np.float32)
    protos = np.stack([cv2.resize(p, (160, 160), interpolation=cv2.INTER_CUBIC) for p in low])
    return table[None], protos[None].astype(np.float32)


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def run(workdir: Path, quick: bool) -> list[Row]:
    """Rows for segmentation post-processing against a real model's session.run."""
    from scripts.harness.onnx_graphs import constant_model

    models_dir = ModelsConfig().dir
    fetch_models(models_dir, ["yolov3-tiny-coco"], quiet=True)
    reference = Detector("yolov3-tiny-coco", DetectorModelConfig(path=Path(YOLOV3_TINY_ONNX)),
                         models_dir)
    outputs = seg_outputs()
    path = constant_model(workdir / "seg.onnx", list(outputs))
    segmenter = Segmenter("seg", DetectorModelConfig(path=path), models_dir)
    frame = np.zeros((720, 1280, 3), np.uint8)
    box = letterbox_geometry(frame.shape, segmenter.input_size)
    raw = [np.asarray(o) for o in outputs]
    tensor = to_tensor(letterbox(frame, reference.input_size)[0])
    feeds = {reference.session.input_name: tensor}
    iterations = 10 if quick else 50
    for _ in range(3):
        reference.session.run(feeds)
        found = segmenter.decode(raw, box)
    assert len(found) == INSTANCES, f"expected {INSTANCES} objects, decoded {len(found)}"
    model_ms = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        reference.session.run(feeds)
        model_ms.append(time.perf_counter() - t0)
    decode_ms = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        segmenter.decode(raw, box)
        decode_ms.append(time.perf_counter() - t0)
    ref, post = _median_ms(model_ms), _median_ms(decode_ms)
    points = sum(len(o) for o in found.outlines)
    return [
        Row(SECTION, "session.run, YOLOv3-tiny 416x416", ref, "ms/frame",
            note=f"median of {iterations}, {reference.config.threads} threads; the lightest "
            "real model we ship (a 640x640 seg model is slower)"),
        Row(SECTION, f"seg decode, {INSTANCES} objects, 1280x720", post, "ms/frame",
            reference_name="session.run", reference_value=ref,
            target="< session.run", ok=post < ref,
            note=f"NMS + masks + outlines ({points} points in all) from [1,116,8400] + "
            "[1,32,160,160]"),
    ]
