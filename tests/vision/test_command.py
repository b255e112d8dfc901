"""``command`` cameras with real children: ffmpeg and GStreamer write frames to our pipe.

Frames the child was fed (a raw BGR file) are compared with the frames the camera decodes,
at each pixel format; a child that dies, one that never writes a frame and one that is
missing give ``reconnecting`` with a reason, and the camera comes back by itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from agent.clock import SystemClock
from agent.events.schema import DeviceRef
from agent.inference.detections import Detections
from agent.pipeline.vision import VisionWorker
from agent.sources.base import SourceState, StateTracker
from agent.sources.camera import CameraCapture
from agent.sources.command import _jpeg_end
from agent.sources.config import CameraConfig, CommandConfig
from tests.vision.conftest import Collector
from tests.vision.fakes import RedSquareDetector

W, H = 160, 120
FED = 6

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None,
                                  reason="ffmpeg not installed (scripts/setup.sh --dev)")
needs_gst = pytest.mark.skipif(shutil.which("gst-launch-1.0") is None,
                               reason="gst-launch-1.0 not installed (scripts/setup.sh --dev)")


# -- presets: the exact command lines ---------------------------------------------------------


def test_rpicam_preset_runs_rpicam_vid_to_stdout() -> None:
    raw = CommandConfig(preset="rpicam", width=1280, height=720, framerate=15, camera=1)
    assert raw.command() == [
        "rpicam-vid", "-t", "0", "-n", "--camera", "1", "--width", "1280", "--height", "720",
        "--framerate", "15", "--codec", "yuv420", "-o", "-",
    ]
    assert raw.pixel_format == "yuv420p" and raw.frame_bytes == 1280 * 720 * 3 // 2
    mjpeg = CommandConfig(preset="rpicam", width=640, height=480, format="mjpeg")
    assert mjpeg.command()[-4:] == ["--codec", "mjpeg", "-o", "-"]
    assert mjpeg.command()[4:12] == ["--camera", "0", "--width", "640", "--height", "480",
                                     "--framerate", "15"]


def test_nvargus_preset_runs_a_gstreamer_pipeline_to_stdout() -> None:
    cfg = CommandConfig(preset="nvargus", width=1920, height=1080, framerate=30, camera=0)
    assert cfg.command() == [
        "gst-launch-1.0", "-q", "nvarguscamerasrc", "sensor-id=0", "!",
        "video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1", "!",
        "nvvidconv", "!", "video/x-raw,format=I420", "!", "fdsink", "fd=1",
    ]
    bgr = CommandConfig(preset="nvargus", width=1280, height=720, framerate=7.5, format="bgr24")
    assert bgr.command()[5:] == [
        "video/x-raw(memory:NVMM),width=1280,height=720,framerate=15/2", "!",
        "nvvidconv", "!", "video/x-raw,format=BGRx", "!", "videoconvert", "!",
        "video/x-raw,format=BGR", "!", "fdsink", "fd=1",
    ]


def test_gstreamer_preset_decodes_rtsp_in_hardware() -> None:
    cfg = CommandConfig(preset="gstreamer", url="rtsp://viewer:S3cret@camera.example:554/stream1",
                        width=1280, height=720)
    assert cfg.command() == [
        "gst-launch-1.0", "-q", "rtspsrc", "location=rtsp://viewer:S3cret@camera.example:554/stream1",
        "latency=200", "protocols=tcp", "!", "rtph264depay", "!", "h264parse", "!",
        "nvv4l2decoder", "!", "nvvidconv", "!", "video/x-raw,format=I420,width=1280,height=720",
        "!", "fdsink", "fd=1",
    ]
    h265 = CommandConfig(preset="gstreamer", url="rtsp://cam/s", width=640, height=360,
                         codec="h265", latency_ms=0)
    assert h265.command()[4:11] == ["latency=0", "protocols=tcp", "!", "rtph265depay", "!",
                                    "h265parse", "!"]
    # Credentials never reach what is shown or logged.
    assert "S3cret" not in cfg.display_argv() and "S3cret" not in cfg.display
    assert "S3cret" not in repr(CameraConfig(id="c", command=cfg))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of preset and argv"),
        ({"preset": "rpicam", "argv": ["x"]}, "exactly one of preset and argv"),
        ({"argv": ["ffmpeg"], "width": 4, "height": 4}, "format"),
        ({"argv": ["ffmpeg"], "format": "bgr24"}, "give width and height"),
        ({"preset": "rpicam"}, "give width and height"),
        ({"argv": ["x"], "format": "nv12", "width": 33, "height": 20}, "must be even"),
        ({"preset": "gstreamer", "width": 64, "height": 64}, "give url"),
        ({"argv": [""], "format": "mjpeg"}, "must name a command"),
    ],
)
def test_bad_command_configs_say_what_is_missing(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CommandConfig(**fields)  # type: ignore[arg-type]


def test_a_command_camera_takes_no_url_and_is_typed_command() -> None:
    cfg = CameraConfig(id="pi", command={"preset": "rpicam", "width": 640, "height": 480})
    assert cfg.camera_type == "command" and not cfg.finite
    assert cfg.display_url == "command rpicam-vid (rpicam)"
    with pytest.raises(ValidationError, match="not url or device"):
        CameraConfig(id="pi", url="/dev/video0",
                     command={"preset": "rpicam", "width": 640, "height": 480})
    with pytest.raises(ValidationError, match="give command"):
        CameraConfig(id="pi", type="command")


# -- MJPEG framing ------------------------------------------------------------------------------


def test_jpeg_framing_skips_garbage_and_inner_thumbnails() -> None:
    ok, jpeg = cv2.imencode(".jpg", np.full((16, 16, 3), 200, np.uint8))
    assert ok
    body = jpeg.tobytes()
    # An APP1 segment holding a thumbnail's own SOI..EOI must not end the frame.
    thumb = b"\xff\xd8\xff\xd9"
    app1 = b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb
    framed = body[:2] + app1 + body[2:]
    buf = bytearray(b"junk\x00\xff" + framed + framed[:10])
    end = _jpeg_end(buf)
    assert end is not None
    start = buf.find(b"\xff\xd8")
    assert bytes(buf[start:end]) == framed
    assert _jpeg_end(bytearray(framed[:-3])) is None


# -- real children --------------------------------------------------------------------------


def fed_frames() -> list[np.ndarray]:
    """Distinct colourful frames (a photo, shifted), so a swapped plane or order shows."""
    from skimage import data

    photo = cv2.resize(np.ascontiguousarray(data.astronaut()[:, :, ::-1]), (W, H),
                       interpolation=cv2.INTER_AREA)
    return [np.ascontiguousarray(np.roll(photo, 20 * k, axis=1)) for k in range(FED)]


@pytest.fixture
def fed_file(tmp_path: Path) -> Path:
    path = tmp_path / "fed.bgr"
    path.write_bytes(b"".join(f.tobytes() for f in fed_frames()))
    return path


def ffmpeg_argv(source: Path, out: str, extra: list[str] | None = None) -> list[str]:
    fmt = ["-f", "mjpeg", "-q:v", "2"] if out == "mjpeg" else ["-f", "rawvideo", "-pix_fmt", out]
    return ["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", *(extra or []),
            "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{W}x{H}", "-r", "10",
            "-i", str(source), *fmt, "-"]


def gst_argv(source: Path, out: str) -> list[str]:
    caps = {"bgr24": "BGR", "yuv420p": "I420", "nv12": "NV12"}[out]
    return ["gst-launch-1.0", "-q", "filesrc", f"location={source}", "!",
            "rawvideoparse", f"width={W}", f"height={H}", "format=bgr", "framerate=10/1", "!",
            "videoconvert", "!", f"video/x-raw,format={caps}", "!", "fdsink", "fd=1"]


def capture(argv: list[str], fmt: str, collector: Collector, **camera: object
            ) -> tuple[CameraCapture, StateTracker]:
    config = CameraConfig(
        id="cmd", fps=None, timeout_s=float(camera.pop("timeout_s", 5.0)),  # type: ignore[arg-type]
        reconnect_min_s=1.0, reconnect_max_s=2.0,
        command={"argv": argv, "format": fmt, "width": W, "height": H}, **camera,
    )
    clock = SystemClock()
    tracker = StateTracker("cmd", "camera", clock, collector.status)
    cap = CameraCapture(config, tracker, clock)
    cap.start()
    return cap, tracker


def read_until(cap: CameraCapture, tracker: StateTracker, seconds: float
               ) -> Iterator[np.ndarray]:
    """Frames until the child's output ended (state reconnecting) or ``seconds`` passed."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = cap.read(0.2)
        if frame is not None:
            yield frame.image
        elif tracker.state is SourceState.RECONNECTING and cap.frames_grabbed:
            return


# Mean absolute error allowed per format: raw BGR is exact; YUV 4:2:0 halves the chroma
# resolution and JPEG quantises it (measured on these frames: about 2 and 3).
TOLERANCE = {"bgr24": 0.0, "yuv420p": 6.0, "nv12": 6.0, "mjpeg": 8.0}


def check_intact(images: list[np.ndarray], fmt: str) -> None:
    fed = fed_frames()
    assert images, "no frame arrived"
    for image in images:
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        errors = [float(np.abs(image.astype(np.int16) - f.astype(np.int16)).mean()) for f in fed]
        best = int(np.argmin(errors))
        # It is one of the fed frames, clearly closer to it than to any other.
        assert errors[best] <= TOLERANCE[fmt], (fmt, errors)
        assert sorted(errors)[1] > errors[best] + 10, (fmt, errors)


@needs_ffmpeg
@pytest.mark.parametrize("fmt", ["bgr24", "yuv420p", "nv12", "mjpeg"])
def test_ffmpeg_frames_arrive_intact(fmt: str, fed_file: Path, collector: Collector) -> None:
    cap, tracker = capture(ffmpeg_argv(fed_file, fmt, ["-re"]), fmt, collector)
    try:
        images = list(read_until(cap, tracker, 20))
    finally:
        cap.stop()
    check_intact(images, fmt)
    # Every frame the child wrote was read whole: none torn, none left in the pipe.
    assert cap.frames_grabbed >= FED and cap.frames_grabbed % FED == 0
    assert cap.decode_errors == 0
    assert len(images) >= FED // 2


@needs_gst
@pytest.mark.parametrize("fmt", ["bgr24", "yuv420p", "nv12"])
def test_gstreamer_frames_arrive_intact(fmt: str, fed_file: Path, collector: Collector) -> None:
    cap, tracker = capture(gst_argv(fed_file, fmt), fmt, collector)
    try:
        images = list(read_until(cap, tracker, 20))
    finally:
        cap.stop()
    check_intact(images, fmt)
    assert cap.frames_grabbed % FED == 0 and cap.decode_errors == 0


@needs_gst
def test_gstreamer_videotestsrc_colour_is_what_was_asked(collector: Collector) -> None:
    argv = ["gst-launch-1.0", "-q", "videotestsrc", "num-buffers=5", "pattern=solid-color",
            "foreground-color=0xffff0000", "!", f"video/x-raw,format=I420,width={W},height={H}",
            "!", "fdsink", "fd=1"]
    cap, tracker = capture(argv, "yuv420p", collector)
    try:
        images = list(read_until(cap, tracker, 20))
    finally:
        cap.stop()
    assert images
    b, g, r = images[-1].reshape(-1, 3).mean(axis=0)
    assert r > 235 and g < 20 and b < 20  # 0xffff0000: opaque red in ARGB


# -- failures: each a state with a reason, and back by itself ------------------------------------


def wait_state(collector: Collector, state: str, after: int = 0, timeout: float = 20.0) -> str:
    """The detail of the first ``state`` status after the ``after``-th status."""
    def found(c: Collector) -> bool:
        return any(s.state.value == state for s in c.statuses[after:])
    assert collector.wait_for(found, timeout), (state, collector.states())
    return next(s.detail or "" for s in collector.statuses[after:] if s.state.value == state)


@needs_ffmpeg
def test_a_killed_child_is_restarted_and_the_camera_runs_again(
    tmp_path: Path, collector: Collector
) -> None:
    pidfile = tmp_path / "pid"
    script = (f'echo $$ > {pidfile}; exec ffmpeg -hide_banner -nostats -loglevel error -re '
              f'-f lavfi -i testsrc=size={W}x{H}:rate=10 -f rawvideo -pix_fmt bgr24 -')
    cap, tracker = capture(["sh", "-c", script], "bgr24", collector)
    try:
        wait_state(collector, "running")
        first = int(pidfile.read_text())
        os.kill(first, signal.SIGKILL)
        detail = wait_state(collector, "reconnecting")
        assert "killed by SIGKILL" in detail, detail
        mark = len(collector.statuses)
        wait_state(collector, "running", after=mark)
        assert int(pidfile.read_text()) != first
        assert cap.read(5.0) is not None
    finally:
        cap.stop()
    assert tracker.reconnects_total >= 1


@needs_ffmpeg
def test_a_child_that_never_writes_a_frame_is_restarted(tmp_path: Path, collector: Collector
                                                         ) -> None:
    # First run: a command that hangs without output; second run: frames.
    flag = tmp_path / "second-run"
    script = (f"if [ -e {flag} ]; then exec ffmpeg -hide_banner -nostats -loglevel error -re "
              f"-f lavfi -i testsrc=size={W}x{H}:rate=10 -f rawvideo -pix_fmt bgr24 -; "
              f"else touch {flag}; exec sleep 60; fi")
    cap, _ = capture(["sh", "-c", script], "bgr24", collector, timeout_s=1.0)
    try:
        detail = wait_state(collector, "reconnecting")
        assert "no frame from command sh within 1 s" in detail, detail
        wait_state(collector, "running")
    finally:
        cap.stop()


def test_a_child_that_fails_reports_its_status_and_last_stderr_line(collector: Collector
                                                                     ) -> None:
    script = "echo 'ERROR: no camera found' >&2; exit 3"
    cap, _tracker = capture(["sh", "-c", script], "bgr24", collector)
    try:
        detail = wait_state(collector, "reconnecting")
    finally:
        cap.stop()
    assert "exited with status 3 (ERROR: no camera found)" in detail, detail


def test_a_missing_program_is_named(collector: Collector) -> None:
    cap, _ = capture(["rpicam-vid-not-installed", "-o", "-"], "yuv420p", collector)
    try:
        detail = wait_state(collector, "reconnecting")
    finally:
        cap.stop()
    assert "rpicam-vid-not-installed not found" in detail, detail


def test_stderr_reaches_the_log_once_per_distinct_line(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    script = ("for i in 1 2 3 4 5 6 7 8; do echo \"frame $i: corrupt macroblock at 0x7f$i\" >&2; "
              "done; echo 'token=abc123 refused' >&2; exit 1")
    with caplog.at_level("INFO", logger="agent.sources.command"):
        cap, _ = capture(["sh", "-c", script], "bgr24", collector)
        try:
            wait_state(collector, "reconnecting")
            time.sleep(0.3)
        finally:
            cap.stop()
    lines = [r.getMessage() for r in caplog.records if "stderr" in r.getMessage()]
    assert sum("corrupt macroblock" in line for line in lines) == 1, lines
    assert any("token=*** refused" in line for line in lines), lines
    assert not any("abc123" in line for line in lines)


class SlowDetector(RedSquareDetector):
    """Takes half a second a frame, like a big model on a small board."""

    def detect(self, frame_bgr: np.ndarray) -> Detections:
        time.sleep(0.5)
        return super().detect(frame_bgr)


@needs_ffmpeg
def test_a_slow_detector_never_backs_up_the_pipe(collector: Collector) -> None:
    # The child writes 3 s of frames (60) in real time; the detector takes 0.5 s a frame.
    argv = ["ffmpeg", "-hide_banner", "-nostats", "-loglevel", "error", "-re", "-f", "lavfi",
            "-i", f"testsrc=size={W}x{H}:rate=20", "-t", "3", "-f", "rawvideo",
            "-pix_fmt", "bgr24", "-"]
    config = CameraConfig(id="cmd", fps=None, motion={"enabled": False},  # type: ignore[arg-type]
                          reconnect_min_s=30, reconnect_max_s=30,
                          command={"argv": argv, "format": "bgr24", "width": W, "height": H})
    detector = SlowDetector()
    worker = VisionWorker(config, detector, None,  # type: ignore[arg-type]
                          DeviceRef(id="dev"), collector.emit, SystemClock(), collector.status)
    worker.start()
    try:
        detail = wait_state(collector, "reconnecting", timeout=25)
        calls = detector.calls
    finally:
        worker.stop()
    # The child wrote all 60 frames and exited normally while the detector saw a handful:
    # the reader drained the pipe and dropped the surplus; it never queued it.
    assert "exited with status 0" in detail, detail
    assert calls < 30
    stats = worker.stats()
    assert stats["frames_captured"] >= 60, stats
    assert stats["frames_skipped"] >= 30, stats
