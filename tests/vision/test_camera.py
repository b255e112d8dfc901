"""Camera sources: configuration, files, folders, MJPEG over HTTP, failures and credentials."""

from __future__ import annotations

import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.clock import SystemClock
from agent.events.schema import DeviceRef
from agent.pipeline.vision import VisionWorker
from agent.sources.base import SourceState, StateTracker
from agent.sources.camera import CameraCapture, Frame
from agent.sources.config import CameraConfig, infer_type
from agent.sources.urls import redact_url
from scripts.harness.mjpeg import MjpegServer, free_port
from scripts.scenes import static_video, write_images, write_video
from tests.vision.conftest import Collector
from tests.vision.fakes import RedSquareDetector, red_square_frames

# -- credentials ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:s3cret@camera.example:554/stream1", "rtsp://***@camera.example:554/stream1"),
        ("http://user@cam.local/video", "http://***@cam.local/video"),
        ("https://cam.local/mjpg?user=bob&password=hunter22&res=hd",
         "https://cam.local/mjpg?user=bob&password=***&res=hd"),
        ("http://cam/video.cgi?token=abc123&Pwd=x&API_KEY=k",
         "http://cam/video.cgi?token=***&Pwd=***&API_KEY=***"),
        ("rtsp://camera.example/stream", "rtsp://camera.example/stream"),
        ("/srv/videos/street.avi", "/srv/videos/street.avi"),
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_redact_url_hides_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_url_survives_malformed_urls() -> None:
    shown = redact_url("rtsp://admin:pa:ss@[bad/stream?token=zz")
    assert "pa:ss" not in shown and "zz" not in shown


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://cam/1", "rtsp"),
        ("rtsps://cam/1", "rtsp"),
        ("http://cam/video", "mjpeg"),
        ("HTTPS://cam/video", "mjpeg"),
        ("rtmp://server/live", "stream"),
        ("/dev/video2", "device"),
        ("/tmp/does-not-exist.mp4", "file"),
        ("/tmp/some-folder/", "folder"),
    ],
)
def test_type_is_inferred_from_the_url(url: str, kind: str) -> None:
    assert infer_type(url) == kind
    assert CameraConfig(id="c", url=url).camera_type == kind


def test_device_index_and_defaults() -> None:
    cfg = CameraConfig(id="usb", device=0)
    assert cfg.camera_type == "device"
    assert cfg.display_url == "/dev/video0"
    assert cfg.fps == 5.0
    assert cfg.model == "yolov3-tiny-coco"
    assert cfg.objects.track == ["person"]
    assert cfg.motion.enabled


def _errors(**kwargs: object) -> str:
    with pytest.raises(ValidationError) as info:
        CameraConfig(**kwargs)  # type: ignore[arg-type]
    return "\n".join(
        ".".join(str(p) for p in e["loc"]) + ": " + e["msg"] for e in info.value.errors()
    )


def test_validation_errors_name_the_key() -> None:
    assert "exactly one of url, device and command" in _errors(id="c")
    assert "exactly one of url, device and command" in _errors(id="c", url="/x.avi", device=0)
    assert "fpz" in _errors(id="c", device=0, fpz=3)
    assert "fps" in _errors(id="c", device=0, fps=0)
    assert "loop" in _errors(id="c", url="rtsp://cam/1", loop=True)
    assert "type: rtsp does not fit" in _errors(id="c", url="/tmp/x.avi", type="rtsp")
    msg = _errors(id="c", device=0, zones={"door": {"coordinates": [[0, 0], [1.5, 0], [1, 1]]}})
    assert "zones.door.coordinates" in msg and "outside 0..1" in msg
    assert "zones.door.coordinates" in _errors(id="c", device=0,
                                               zones={"door": {"coordinates": [[0, 0], [1, 1]]}})
    assert "objects.filters.person.min_score" in _errors(
        id="c", device=0, objects={"filters": {"person": {"min_score": 2}}})
    assert "tracking.max_disappeared" in _errors(id="c", device=0,
                                                 tracking={"max_disappeared": 0})
    assert "reconnect_max_s" in _errors(id="c", device=0, reconnect_min_s=10, reconnect_max_s=1)


def test_credentials_never_in_config_repr_or_errors() -> None:
    cfg = CameraConfig(id="c", url="rtsp://admin:s3cret@cam/1")
    assert "s3cret" not in repr(cfg)
    assert "s3cret" not in cfg.display_url
    assert "s3cret" not in _errors(id="c", url="rtsp://admin:s3cret@cam/1", type="file")


# -- capture from files and folders -----------------------------------------------------------


def _capture(cfg: CameraConfig) -> tuple[CameraCapture, list[str]]:
    seen: list[str] = []
    tracker = StateTracker(cfg.id, "camera", SystemClock(), lambda s: seen.append(s.state.value))
    cap = CameraCapture(cfg, tracker, SystemClock())
    return cap, seen


def _drain(cap: CameraCapture, limit: int = 10_000) -> list[Frame]:
    frames: list[Frame] = []
    cap.start()
    try:
        while len(frames) < limit:
            frame = cap.read(5.0)
            if frame is None:
                if cap.finished.is_set():
                    break
                continue
            frames.append(frame)
    finally:
        cap.stop()
    return frames


def test_file_not_realtime_delivers_every_due_frame_in_order(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    assert write_video(path, red_square_frames(30), fps=10) == 30
    cap, states = _capture(CameraConfig(id="f", url=str(path), realtime=False, fps=5))
    frames = _drain(cap)
    # 3 s of video at a 5 fps cap: every other frame, on the file's own timeline.
    assert len(frames) == 15
    assert [round(f.t, 3) for f in frames] == [round(0.2 * i, 3) for i in range(15)]
    assert cap.frames_grabbed == 30 and cap.frames_dropped == 0
    assert states == ["running", "ended"]

    cap, _ = _capture(CameraConfig(id="f", url=str(path), realtime=False, fps=None))
    assert len(_drain(cap)) == 30


def test_file_loops_and_its_timeline_keeps_going(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    write_video(path, red_square_frames(10), fps=10)
    cap, states = _capture(CameraConfig(id="f", url=str(path), realtime=False, fps=None,
                                        loop=True))
    frames = _drain(cap, limit=35)
    assert len(frames) == 35
    times = [f.t for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert states == ["running"]


def test_realtime_keeps_only_the_newest_frame_for_a_slow_consumer(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    write_video(path, red_square_frames(60), fps=30)
    cap, _ = _capture(CameraConfig(id="f", url=str(path), realtime=True, fps=None))
    cap.start()
    taken: list[Frame] = []
    try:
        while not cap.finished.is_set() and len(taken) < 6:
            frame = cap.read(2.0)
            if frame is not None:
                taken.append(frame)
                time.sleep(0.25)  # a detector far slower than the camera
    finally:
        cap.stop()
    # Frames were overwritten, not queued: what the consumer gets skips ahead.
    assert cap.frames_dropped > 0
    assert any(b.seq - a.seq > 1 for a, b in itertools.pairwise(taken))


def test_folder_of_images_and_resize(tmp_path: Path) -> None:
    write_images(tmp_path / "imgs", red_square_frames(4))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    cfg = CameraConfig(id="dir", url=str(tmp_path / "imgs"), realtime=False,
                       resize={"width": 160})
    assert cfg.camera_type == "folder"
    cap, states = _capture(cfg)
    frames = _drain(cap)
    assert len(frames) == 4
    assert frames[0].image.shape == (120, 160, 3)
    assert states == ["running", "ended"]


def test_empty_folder_and_missing_file_are_errors_naming_them(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cap, states = _capture(CameraConfig(id="d", url=str(tmp_path / "empty") + "/"))
    assert _drain(cap) == []
    assert states == ["error"]
    assert "holds no images" in str(cap.tracker.status.detail)

    cap, states = _capture(CameraConfig(id="m", url=str(tmp_path / "missing.avi")))
    assert _drain(cap) == []
    assert states == ["error"]
    assert str(tmp_path / "missing.avi") in str(cap.tracker.status.detail)

    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    cap, states = _capture(CameraConfig(id="j", url=str(junk)))
    assert _drain(cap) == []
    assert states == ["error"]
    assert "junk.avi" in str(cap.tracker.status.detail)


# -- workers on cameras that fail -------------------------------------------------------------


def _worker(cfg: CameraConfig, collector: Collector, detector: object | None = None,
            **kwargs: object) -> VisionWorker:
    return VisionWorker(cfg, detector or RedSquareDetector(), None,  # type: ignore[arg-type]
                        DeviceRef(id="dev"), collector.emit, SystemClock(), collector.status,
                        **kwargs)  # type: ignore[arg-type]


def test_missing_file_reports_error_naming_the_camera(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture, stop_later
) -> None:
    caplog.set_level(logging.INFO)
    worker = stop_later(_worker(CameraConfig(id="yard", url=str(tmp_path / "nope.mp4")),
                                collector))
    worker.start()
    assert collector.wait_for(lambda c: "error" in c.states(), 10)
    assert "nope.mp4 not found" in str(worker.tracker.status.detail)
    assert "camera yard" in caplog.text and "nope.mp4" in caplog.text
    assert worker.stats()["state"] == "error"


def test_unreachable_url_reconnects_without_leaking_credentials(
    collector: Collector, caplog: pytest.LogCaptureFixture, stop_later
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    url = f"http://admin:s3cretpw@127.0.0.1:{port}/video?token=t0k3nvalue"
    worker = stop_later(_worker(
        CameraConfig(id="gate", url=url, reconnect_min_s=0.05, reconnect_max_s=0.2), collector
    ))
    worker.start()
    assert collector.wait_for(lambda c: "reconnecting" in c.states(), 10)
    time.sleep(0.5)  # several retries
    status = worker.tracker.status
    assert status.state is SourceState.RECONNECTING
    assert "connection refused" in str(status.detail)
    assert f"127.0.0.1:{port}" in str(status.detail)
    stats = worker.stats()
    assert stats["reconnects"] == 1  # one outage, however many attempts
    worker.stop()
    shown = caplog.text + repr(collector.statuses) + repr(stats)
    assert "s3cretpw" not in shown and "t0k3nvalue" not in shown and "admin" not in shown
    assert "camera gate" in caplog.text


def test_mjpeg_stream_stops_and_comes_back(collector: Collector, stop_later) -> None:
    server = MjpegServer(red_square_frames(10), fps=25)
    server.start()
    stop_later(server)
    worker = stop_later(_worker(
        CameraConfig(id="ipcam", url=server.url(), fps=10, reconnect_min_s=0.1,
                     reconnect_max_s=0.3, timeout_s=2), collector
    ))
    worker.start()
    assert collector.wait_for(lambda c: c.states() == ["running"], 15)
    assert _wait(lambda: worker.frames_processed >= 3)

    server.stop()
    assert collector.wait_for(lambda c: "reconnecting" in c.states(), 10)
    time.sleep(0.5)  # refused connections while it is down
    server.start()
    assert collector.wait_for(lambda c: c.states()[-1:] == ["running"] and
                              "reconnecting" in c.states(), 15)
    before = worker.frames_processed
    assert _wait(lambda: worker.frames_processed > before + 2)
    states = collector.states()
    assert states[0] == "running" and states[-1] == "running"
    assert set(states) == {"running", "reconnecting"}
    assert worker.tracker.reconnects_total == 1
    stats = worker.stats()
    assert stats["reconnects"] == 1 and stats["reconnects_last_hour"] == 1
    assert stats["capture_fps"] > 0


def test_mjpeg_basic_auth_and_parts_without_length(collector: Collector, stop_later) -> None:
    server = MjpegServer(red_square_frames(4), fps=20, auth="viewer:pa55word",
                         content_length=False)
    server.start()
    stop_later(server)
    good = stop_later(_worker(CameraConfig(id="ok", url=server.url(credentials="viewer:pa55word"),
                                           fps=10), collector))
    good.start()
    assert _wait(lambda: good.frames_processed >= 3)
    frame = good.snapshot_now()
    assert frame is not None and frame.images[0].width == 320

    bad_log = Collector()
    bad = stop_later(_worker(CameraConfig(id="bad", url=server.url(credentials="viewer:wrong"),
                                          reconnect_min_s=0.1), bad_log))
    bad.start()
    assert bad_log.wait_for(lambda c: "reconnecting" in c.states(), 10)
    detail = str(bad.tracker.status.detail)
    assert "401" in detail and "credentials" in detail and "wrong" not in detail


def test_jpeg_snapshot_url_is_polled(collector: Collector, stop_later) -> None:
    server = MjpegServer(red_square_frames(1))
    server.start()
    stop_later(server)
    worker = stop_later(_worker(CameraConfig(id="snap", url=server.url("/snapshot.jpg"),
                                             fps=10), collector))
    worker.start()
    assert _wait(lambda: worker.frames_processed >= 3)
    assert server.requests >= 3


def test_static_scene_is_motion_gated(tmp_path: Path, collector: Collector, stop_later) -> None:
    path = tmp_path / "static.avi"
    static_video(path, seconds=4, fps=10)
    detector = RedSquareDetector()
    worker = stop_later(_worker(CameraConfig(id="s", url=str(path), realtime=False), collector,
                                detector))
    worker.start()
    assert collector.wait_for(lambda c: "ended" in c.states(), 20)
    worker.stop()
    # 20 frames at 5 fps: the detector looks once (no background yet), then never again.
    assert worker.frames_processed == 20
    assert detector.calls == 1
    assert worker.motion_gated == 19


def _wait(predicate, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def test_frames_are_bgr_uint8(tmp_path: Path) -> None:
    path = tmp_path / "v.avi"
    write_video(path, red_square_frames(3), fps=10)
    cap, _ = _capture(CameraConfig(id="f", url=str(path), realtime=False, fps=None))
    frames = _drain(cap)
    assert frames and all(f.image.dtype == np.uint8 and f.image.shape[2] == 3 for f in frames)


def test_a_parked_object_idles_the_detector_and_its_departure_is_seen_promptly(
    tmp_path: Path, collector: Collector, stop_later
) -> None:
    # 10 fps file: moves 1 s, parks 15 s, then is gone for 10 s (processed at 5 fps).
    path = tmp_path / "parked.avi"
    write_video(path, red_square_frames(260, still_from=10, gone_from=160), fps=10)
    detector = RedSquareDetector()
    worker = stop_later(_worker(CameraConfig(id="p", url=str(path), realtime=False), collector,
                                detector))
    worker.start()
    assert collector.wait_for(lambda c: "ended" in c.states(), 60)
    worker.stop()
    phases = [e.phase for e in collector.events]
    assert phases[0] == "new" and phases.count("new") == 1 and phases[-1] == "end"
    assert any(e.object and e.object.stationary for e in collector.events)
    # Parked 15 s = 75 frames, but the detector ran far fewer times than that: once the
    # background has learnt the parked square, only the keepalive wakes it.
    assert worker.frames_detected < 130 - 40
    assert worker.motion_gated > 40
    # Gone at 16 s on the file's timeline; the end follows within max_disappeared runs at
    # 5 fps (25 runs, 5 s), not at the keepalive rate, and well before the file ends (26 s).
    end = collector.events[-1]
    started = collector.events[0].started_at
    assert end.timestamp and started
    gone_after = (end.timestamp - started).total_seconds()
    assert gone_after < 16.0 + 6.0, gone_after
