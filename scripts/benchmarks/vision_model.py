"""Default detection model: raw onnxruntime speed vs ``Detector.detect`` on the same frames.

The reference is a bare ``session.run`` on a fixed, already preprocessed tensor; the
measure is the whole ``detect`` (letterbox, tensor, run, decode, NMS, unletterbox) on a
720p camera-sized frame, so the ratio and the overhead row show what our pre- and
post-processing add to the model itself.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from agent.config import ModelsConfig
from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.fetch import YOLOV3_TINY_ONNX, fetch_models
from agent.inference.letterbox import letterbox, to_tensor
from scripts.benchmarks import Row

SECTION = "vision-model"
OVERHEAD_TARGET_MS = 5.0


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def run(workdir: Path, quick: bool) -> list[Row]:
    """Rows for the default model; ``workdir`` is unused (the model lives in models.dir)."""
    models_dir = ModelsConfig().dir
    fetch_models(models_dir, ["yolov3-tiny-coco"], quiet=True)
    detector = Detector("yolov3-tiny-coco", DetectorModelConfig(path=Path(YOLOV3_TINY_ONNX)),
                        models_dir)
    photo = np.ascontiguousarray(data.stereo_motorcycle()[0][:, :, ::-1])
    frame = np.asarray(cv2.resize(photo, (1280, 720)), dtype=np.uint8)
    tensor = to_tensor(letterbox(frame, detector.input_size)[0])
    feeds = {detector.session.input_name: tensor}
    iterations = 10 if quick else 60
    for _ in range(3):  # warm-up: first runs allocate arenas
        detector.session.run(feeds)
        detector.detect(frame)

    raw: list[float] = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        detector.session.run(feeds)
        raw.append(time.perf_counter() - t0)
    whole: list[float] = []
    overhead: list[float] = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        detector.detect(frame)
        elapsed = time.perf_counter() - t0
        whole.append(elapsed)
        overhead.append(elapsed - detector.last_inference_ms / 1000.0)

    raw_ms, whole_ms, over_ms = _median_ms(raw), _median_ms(whole), _median_ms(overhead)
    threads = detector.config.threads
    return [
        Row(SECTION, "session.run, 416x416 tensor", raw_ms, "ms/frame",
            note=f"median of {iterations}, {threads} threads, {detector.session.providers[0]}"),
        Row(SECTION, "Detector.detect, 1280x720 frame", whole_ms, "ms/frame",
            reference_name="session.run", reference_value=raw_ms,
            note="letterbox + tensor + run + decode + NMS + unletterbox"),
        Row(SECTION, "detect throughput", 1000.0 / whole_ms, "frames/s",
            reference_name="session.run", reference_value=1000.0 / raw_ms),
        Row(SECTION, "pre/post-processing overhead", over_ms, "ms/frame",
            target=f"< {OVERHEAD_TARGET_MS:g} ms", ok=over_ms < OVERHEAD_TARGET_MS,
            note="detect minus its own session.run time, per call"),
    ]
