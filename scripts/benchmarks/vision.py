"""Vision pipeline: what a camera costs beyond the model, measured on this machine.

Every figure runs the real worker (OpenCV capture of a generated MJPG/AVI file, motion gate,
the default model, tracking, event building with JPEG snapshots, a list as the sink):

- Throughput: the whole pipeline on a 640x480 video with the motion gate off and no fps cap
  (decode, letterbox, run, decode outputs, NMS, track, build events, enqueue), frames per
  second, against bare ``session.run`` on the same frames already turned into tensors.
- CPU on a static scene: a 15 fps 640x480 video paced in real time, 5 fps processed, motion
  gating on; process CPU time over wall time, in % of one core. Reference: the same with
  the gate off (the detector on every processed frame).
- Latency: the crossing video paced in real time at 5 fps; from the moment a frame is read
  from the source to the moment its events are in the sink, p95 over every frame the detector
  ran on, against the model's own inference time (median) in the same run.
- Lifecycle: in that run, one motorbike crossing should give 1 new, 1 end, few updates.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.clock import SystemClock
from agent.config import ModelsConfig
from agent.events.schema import DeviceRef, Event
from agent.inference.config import DetectorModelConfig
from agent.inference.detector import Detector
from agent.inference.fetch import fetch_models
from agent.inference.letterbox import letterbox, to_tensor
from agent.labels import LabelCatalogue
from agent.pipeline.vision import VisionWorker
from agent.sources.config import CameraConfig
from scripts.benchmarks import Row, worker_cpu_share

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from scripts.scenes import crossing_video, static_video, write_video  # noqa: E402

SECTION = "vision"
MODEL = "yolov3-tiny-coco"
THROUGHPUT_TARGET = 0.9
CPU_TARGET_PCT = 15.0
LATENCY_TARGET = 1.5


def _worker(config: CameraConfig, detector: Detector, catalogue: LabelCatalogue,
            sink: list[Event]) -> VisionWorker:
    return VisionWorker(config, detector, catalogue, DeviceRef(id="bench"), sink.append,
                        SystemClock())


def _run_until_ended(worker: VisionWorker, timeout: float) -> float:
    """Run a worker on a file to its end; returns the wall seconds it took."""
    start = time.perf_counter()
    worker.start()
    deadline = start + timeout
    while worker.alive and time.perf_counter() < deadline:
        time.sleep(0.02)
    elapsed = time.perf_counter() - start
    worker.stop()
    return elapsed


def _cpu_share(worker: VisionWorker, seconds: float) -> tuple[float, dict[str, Any]]:
    """% of one core used while ``worker`` ran, past start-up (file open, first detections)."""
    return worker_cpu_share(worker, seconds, warmup=min(2.0, seconds / 4))


def run(workdir: Path, quick: bool) -> list[Row]:
    """Rows for the vision pipeline; generated videos go under ``workdir/vision``."""
    models_dir = ModelsConfig().dir
    fetch_models(models_dir, [MODEL], quiet=True)
    model_config = DetectorModelConfig(path=Path(f"{MODEL}.onnx"))
    detector = Detector(MODEL, model_config, models_dir)
    catalogue = LabelCatalogue.load()
    media = workdir / "vision"
    media.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    # -- throughput: pipeline vs bare session.run on the same frames ------------------------
    n = 30 if quick else 90
    crossing = crossing_video(media / "crossing.avi")
    frames = [f for _, f in zip(range(n), _video_frames(crossing.path), strict=False)]
    clip = media / "throughput.avi"
    write_video(clip, frames, 10)
    tensors = [to_tensor(letterbox(f, detector.input_size)[0]).copy() for f in frames]
    name = detector.session.input_name
    for t in tensors[:3]:  # warm-up: first runs allocate arenas
        detector.session.run({name: t})
    config = CameraConfig(id="bench", url=str(clip), realtime=False, fps=None,
                          motion={"enabled": False},
                          objects={"track": ["motorbike", "person"]})
    # Interleaved rounds, best of each: other processes on a shared machine then slow both
    # sides alike instead of whichever happened to run during a burst.
    rounds = 2 if quick else 3
    raw_fps = pipe_fps = 0.0
    sink: list[Event] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for t in tensors:
            detector.session.run({name: t})
        raw_fps = max(raw_fps, len(tensors) / (time.perf_counter() - t0))
        sink = []
        worker = _worker(config, detector, catalogue, sink)
        elapsed = _run_until_ended(worker, 600)
        pipe_fps = max(pipe_fps, worker.frames_processed / elapsed)
    rows += [
        Row(SECTION, "session.run on pre-made tensors", raw_fps, "frames/s",
            note=f"{len(tensors)} frames, best of {rounds}, {model_config.threads} threads, "
            f"{detector.session.providers[0]}"),
        Row(SECTION, "pipeline, 640x480 MJPG file, gate off", pipe_fps, "frames/s",
            reference_name="session.run", reference_value=raw_fps,
            target=f">= {THROUGHPUT_TARGET:.0%} of session.run",
            ok=pipe_fps >= THROUGHPUT_TARGET * raw_fps,
            note=f"best of {rounds}, interleaved; capture+decode, letterbox, run, NMS, track, "
            f"{len(sink)} events with JPEGs"),
    ]

    # -- CPU on a static scene at 5 fps ---------------------------------------------------
    static = media / "static.avi"
    static_video(static, seconds=10, fps=15)
    seconds = 6.0 if quick else 20.0
    gated_cfg = CameraConfig(id="static", url=str(static), loop=True, fps=5)
    gated_pct, gated = _cpu_share(_worker(gated_cfg, detector, catalogue, []), seconds)
    ungated_cfg = gated_cfg.model_copy(update={"motion": gated_cfg.motion.model_copy(
        update={"enabled": False})})
    ungated_pct, _ = _cpu_share(_worker(ungated_cfg, detector, catalogue, []), seconds / 2)
    rows.append(Row(
        SECTION, "CPU, static 640x480 scene at 5 fps, gate on", gated_pct, "% of a core",
        reference_name="gate off", reference_value=ungated_pct,
        target=f"< {CPU_TARGET_PCT:g}%", ok=gated_pct < CPU_TARGET_PCT,
        note=f"{seconds:g} s; 15 fps file paced in real time; "
        f"{gated['motion_gated']} of {gated['frames_processed']} frames gated",
    ))

    # -- latency and lifecycle on the crossing, paced -------------------------------------
    sink = []
    cfg = CameraConfig(id="crossing", url=str(crossing.path), fps=5,
                       objects={"track": ["motorbike", "person"]})
    worker = _worker(cfg, detector, catalogue, sink)
    _run_until_ended(worker, 120)
    latency = worker.latency_ms.summary()
    inference = worker.inference_ms.summary()
    p95, p50_inf = latency["p95"] or 0.0, inference["p50"] or 0.0
    timings = np.asarray(list(worker.frame_timings) or [(0.0, 1.0)])
    ratio_p95 = float(np.percentile(timings[:, 0] / np.maximum(timings[:, 1], 1e-3), 95))
    overhead = worker.overhead_ms.summary()
    phases = [e.phase for e in sink]
    new, end, upd = phases.count("new"), phases.count("end"), phases.count("update")
    rows += [
        Row(SECTION, "capture -> events emitted / own inference, p95", ratio_p95, "x",
            target=f"< {LATENCY_TARGET:g}x", ok=ratio_p95 < LATENCY_TARGET,
            note=f"per frame: latency over that frame's session.run; "
            f"{worker.frames_detected} frames detected, 10 fps file paced, 5 fps processed"),
        Row(SECTION, "capture -> events emitted, p95", p95, "ms",
            reference_name="inference p50", reference_value=p50_inf,
            note=f"inference p95 {inference['p95']} ms; pipeline overhead p50/p95 "
            f"{overhead['p50']}/{overhead['p95']} ms; event latencies "
            f"{worker.event_latency_ms.summary()}"),
        Row(SECTION, "one motorbike crossing: events", float(len(sink)), "events",
            target="1 new, 1 end, <= 3 updates", ok=new == 1 and end == 1 and upd <= 3,
            note=f"new {new}, update {upd}, end {end}"),
    ]
    return rows


def _video_frames(path: Path) -> Any:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield np.asarray(frame, dtype=np.uint8)
    finally:
        cap.release()


if __name__ == "__main__":
    for row in run(REPO / "var", quick="--quick" in sys.argv):
        print(row)
