#!/usr/bin/env python3
"""Check an accelerated onnxruntime execution provider against the CPU, through the agent's
own detector: which providers a session really got, the same detections, and the speed.

Run it on the board (a Jetson with onnxruntime-gpu, a PC with a GPU) after
`edge-agent models fetch`:

    .venv/bin/python scripts/check_providers.py                       # cuda, then cpu
    .venv/bin/python scripts/check_providers.py --providers tensorrt,cuda,cpu --runs 200

For each provider list it loads the default detector the way the agent does (`providers:` in
`models.detectors`), prints the providers onnxruntime actually used, runs scikit-image's
bundled photos (or generated frames when scikit-image is missing) through `detect` and
compares every detection with the CPU's (same label, IoU, score), then times `session.run`
alone and the whole `detect` call. Exit 1 when the detections differ or the first provider
asked for was not used.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.inference.config import DetectorModelConfig  # noqa: E402
from agent.inference.detections import Detections  # noqa: E402
from agent.inference.detector import Detector  # noqa: E402
from agent.inference.session import PROVIDER_ALIASES  # noqa: E402

IOU_MIN = 0.98
SCORE_TOLERANCE = 0.01


def photos() -> list[tuple[str, np.ndarray]]:
    """BGR test pictures: scikit-image's bundled photos, else seeded noise frames."""
    try:
        from skimage import data
    except ImportError:
        rng = np.random.default_rng(0)
        return [(f"noise-{i}", rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
                for i in range(3)]
    out = []
    for name in ("camera", "coffee", "astronaut", "chelsea"):
        image = getattr(data, name)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        out.append((name, np.ascontiguousarray(image[:, :, ::-1])))
    left, _, _ = data.stereo_motorcycle()
    out.append(("motorcycle", np.ascontiguousarray(left[:, :, ::-1])))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def compare(reference: Detections, other: Detections) -> tuple[int, float, float]:
    """(mismatches, lowest IoU, largest score difference) of ``other`` against the CPU's."""
    mismatches = abs(len(reference.confidence) - len(other.confidence))
    worst_iou, worst_score = 1.0, 0.0
    for box, score, cls in zip(reference.xyxy, reference.confidence, reference.class_id,
                               strict=True):
        same = np.flatnonzero(other.class_id == cls)
        if not len(same):
            mismatches += 1
            continue
        best = max(same, key=lambda j: iou(box, other.xyxy[j]))
        worst_iou = min(worst_iou, iou(box, other.xyxy[best]))
        worst_score = max(worst_score, abs(float(score) - float(other.confidence[best])))
    return mismatches, worst_iou, worst_score


def timed(fn: object, runs: int) -> tuple[float, float]:
    """(median, p95) milliseconds of ``runs`` calls after 10 warm-ups."""
    call = fn  # type: ignore[assignment]
    for _ in range(10):
        call()  # type: ignore[operator]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "yolov3-tiny-coco.onnx")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models",
                        help="where labels/ is (default: the repository's models/)")
    parser.add_argument("--providers", action="append",
                        help="a provider list to check, e.g. cuda,cpu (repeatable; "
                             "default: cuda,cpu)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, available providers: {ort.get_available_providers()}")
    pictures = photos()

    def load(providers: list[str]) -> Detector:
        config = DetectorModelConfig(path=args.model, providers=providers, threads=args.threads)
        return Detector("check", config, args.models_dir)

    cpu = load(["cpu"])
    reference = [cpu.detect(img) for _, img in pictures]
    found = sum(len(d.confidence) for d in reference)
    print(f"cpu: {found} detections on {len(pictures)} pictures")
    frame = pictures[0][1]
    tensor = {cpu.session.input_name: cpu._tensor}
    rows = [("cpu", cpu.session.providers[0], *timed(lambda: cpu.session.run(tensor), args.runs),
             *timed(lambda: cpu.detect(frame), args.runs))]
    failed = False
    for spec in args.providers or ["cuda,cpu"]:
        wanted = [p.strip() for p in spec.split(",") if p.strip()]
        detector = load(wanted)
        used = detector.session.providers
        first = PROVIDER_ALIASES.get(wanted[0].lower(), wanted[0])
        got_first = used[0] == first
        print(f"{spec}: session providers {used}"
              + ("" if got_first else f"  <- {first} was asked for first but not used"))
        failed |= not got_first
        mism, low_iou, score_diff = 0, 1.0, 0.0
        for (name, img), ref in zip(pictures, reference, strict=True):
            m, i, s = compare(ref, detector.detect(img))
            mism, low_iou, score_diff = mism + m, min(low_iou, i), max(score_diff, s)
            if m:
                print(f"  {name}: {m} detections differ from the CPU's")
        agree = mism == 0 and low_iou >= IOU_MIN and score_diff <= SCORE_TOLERANCE
        print(f"  against cpu: {mism} mismatches, lowest IoU {low_iou:.4f}, "
              f"largest score difference {score_diff:.4f} -> {'same' if agree else 'DIFFERENT'}")
        failed |= not agree
        feeds = {detector.session.input_name: detector._tensor}
        rows.append((spec, used[0],
                     *timed(lambda d=detector, f=feeds: d.session.run(f), args.runs),  # type: ignore[misc]
                     *timed(lambda d=detector: d.detect(frame), args.runs)))  # type: ignore[misc]

    height, width = frame.shape[:2]
    print(f"\n{args.runs} runs each on a {width}x{height} frame ({pictures[0][0]}), after 10 "
          "warm-ups")
    print("| providers | first used | session.run p50 ms | p95 | detect() p50 ms | p95 |")
    print("|---|---|---|---|---|---|")
    for spec, used0, r50, r95, d50, d95 in rows:
        print(f"| {spec} | {used0} | {r50:.2f} | {r95:.2f} | {d50:.2f} | {d95:.2f} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
