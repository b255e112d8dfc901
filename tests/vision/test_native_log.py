"""Native library lines through the agent's log, causes named in the status, damaged input.

The RTSP tests run the real agent (only ``edge-agent run`` captures file descriptor 2)
against a loopback RTSP responder that refuses every DESCRIBE, as a camera with a wrong
password or a wrong path does.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from agent.clock import SystemClock
from agent.sources import native_log
from agent.sources.base import SourceState, StateTracker
from agent.sources.camera import CameraCapture
from agent.sources.config import CameraConfig
from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker, Received
from scripts.scenes import static_video
from tests.vision.conftest import Collector
from tests.vision.rtsp import RtspResponder

BASE = "edge-agent/test-edge"
PASSWORD = "Wr0ngPassw0rd"

# Lines OpenCV 4.x and its FFmpeg printed for these cases (tests/vision/rtsp.py responder).
DESCRIBE_401 = "[rtsp @ 0x55cbe5f94900] method DESCRIBE failed: 401 (Unauthorized)"
DESCRIBE_404 = "[rtsp @ 0x55cbe5f9ea40] method DESCRIBE failed: 404 (Not Found)"
REFUSED = "[tcp @ 0x55cbe5d713c0] Connection to tcp://127.0.0.1:9?timeout=0 failed: " \
    "Connection refused"
OPENCV_WARN = ("[ WARN:0@4.018] global cap.cpp:212 open VIDEOIO(FFMPEG): backend is generally "
               "available but can't be used to capture by name")


def test_native_lines_are_parsed_into_level_and_message() -> None:
    assert native_log.parse(DESCRIBE_401) == (
        logging.WARNING, "FFmpeg rtsp: method DESCRIBE failed: 401 (Unauthorized)")
    level, message = native_log.parse(OPENCV_WARN)
    assert level == logging.WARNING
    assert message.startswith("OpenCV: open VIDEOIO(FFMPEG): backend is generally available")
    assert native_log.parse("[ERROR:0@1.0] global x.cpp:1 f boom")[0] == logging.ERROR


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        ([DESCRIBE_401, OPENCV_WARN], "refused the credentials (401 Unauthorized: check the"),
        ([DESCRIBE_404, OPENCV_WARN], "404 Not Found: wrong path"),
        ([REFUSED, OPENCV_WARN], "connection refused"),
        (["[tcp @ 0x1] Connection to tcp://10.9.9.9:554 failed: Connection timed out"],
         "timed out"),
    ],
)
def test_the_cause_is_named_in_words(lines: list[str], words: str) -> None:
    assert words in (native_log.cause(lines) or "")


def test_nothing_recognisable_names_no_cause() -> None:
    assert native_log.cause([OPENCV_WARN]) is None


# -- damaged files --------------------------------------------------------------------------


def test_a_truncated_file_is_counted_and_not_a_normal_end(tmp_path: Path) -> None:
    whole = tmp_path / "whole.avi"
    frames = static_video(whole, seconds=4)
    cut = tmp_path / "cut.avi"
    data = whole.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    collector = Collector()
    clock = SystemClock()
    tracker = StateTracker("cut", "camera", clock, collector.status)
    cap = CameraCapture(CameraConfig(id="cut", url=str(cut), realtime=False, fps=None),
                        tracker, clock)
    cap.start()
    try:
        while not cap.finished.is_set():
            cap.read(0.2)
    finally:
        cap.stop()
    status = tracker.status
    assert status.state is SourceState.ERROR, status
    assert "is damaged: only" in (status.detail or "") and f"of {frames} frames" in status.detail
    assert cap.decode_errors == frames - cap.frames_grabbed > 0


# -- a V4L2 path that disappears and reappears ---------------------------------------------------


@pytest.mark.skipif(not os.access("/dev", os.W_OK), reason="needs a writable /dev (root)")
def test_a_device_path_that_comes_and_goes_is_retried_like_any_camera() -> None:
    path = Path("/dev/video57")
    if path.exists():
        pytest.skip("/dev/video57 exists here")
    collector = Collector()
    clock = SystemClock()
    tracker = StateTracker("usb", "camera", clock, collector.status)
    cap = CameraCapture(CameraConfig(id="usb", url=str(path), reconnect_min_s=0.1,
                                     reconnect_max_s=0.2), tracker, clock)
    cap.start()
    try:
        assert collector.wait_for(lambda c: "does not exist (unplugged?)" in
                                  (c.statuses[-1].detail or "") if c.statuses else False, 10)
        # It appears (a plain file stands in for the device node): retried and noticed.
        path.write_bytes(b"")
        assert collector.wait_for(lambda c: bool(c.statuses) and "unplugged" not in
                                  (c.statuses[-1].detail or ""), 10)
        path.unlink()
        assert collector.wait_for(lambda c: "unplugged" in (c.statuses[-1].detail or ""), 10)
        assert tracker.state is SourceState.RECONNECTING
        assert "error" not in collector.states()
    finally:
        cap.stop()
        path.unlink(missing_ok=True)


# -- the agent and a camera that refuses us -------------------------------------------------------


def statuses(messages: list[Received], source: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages
            if m.topic == f"{BASE}/sources/{source}/status" and m.payload]


def camera_lines(log: str) -> list[str]:
    """Log lines about the failing camera (the agent's and the native libraries'), not
    counting the stop at the end of the test."""
    return [line for line in log.splitlines()
            if ("agent.native" in line or "camera door" in line or "rtsp" in line.lower())
            and not line.endswith("camera door: stopped")]


def run_refused_camera(tmp_path: Path, broker: Broker, recorder: Any,
                       agents: list[AgentProcess], responder: RtspResponder, seconds: float
                       ) -> tuple[AgentProcess, list[Received]]:
    rec = recorder(f"{BASE}/#")
    camera = {"id": "door", "url": responder.url(credentials=f"viewer:{PASSWORD}"),
              "reconnect_min_s": 1, "reconnect_max_s": 2, "timeout_s": 3}
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port, cameras=[camera]))
    agents.append(agent)
    agent.start()
    time.sleep(seconds)
    assert agent.stop() == 0
    return agent, rec.messages


# The default suite watches 20 s (about ten tries); the soak run the full minute.
@pytest.mark.slow
@pytest.mark.parametrize("seconds", [20, pytest.param(60, marks=pytest.mark.soak)])
def test_a_camera_with_a_wrong_password_logs_at_most_3_lines(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess], seconds: int
) -> None:
    responder = RtspResponder(401, "Unauthorized")
    try:
        agent, messages = run_refused_camera(tmp_path, broker, recorder, agents, responder,
                                             seconds)
    finally:
        responder.stop()
    assert responder.describes >= seconds // 4  # it kept trying, about every 2 s
    lines = camera_lines(agent.log)
    assert 1 <= len(lines) <= 3, "\n".join(lines)
    assert PASSWORD not in agent.log
    reconnecting = [s for s in statuses(messages, "door") if s["state"] == "reconnecting"]
    assert reconnecting, statuses(messages, "door")
    assert "the camera refused the credentials" in reconnecting[-1]["detail"]
    assert "check the credentials" in reconnecting[-1]["detail"]


@pytest.mark.slow
def test_a_wrong_path_is_named_in_the_status(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    responder = RtspResponder(404, "Not Found")
    try:
        agent, messages = run_refused_camera(tmp_path, broker, recorder, agents, responder, 8)
    finally:
        responder.stop()
    reconnecting = [s for s in statuses(messages, "door") if s["state"] == "reconnecting"]
    assert reconnecting and "wrong path" in reconnecting[-1]["detail"], statuses(messages, "door")
    assert len(camera_lines(agent.log)) <= 3
