"""The agent with ``command`` cameras, end to end: children -> frames -> model -> MQTT.

ffmpeg (raw YUV and MJPEG) and GStreamer play a motorbike crossing an empty street in real
time; the real default model finds it and each camera publishes one ``new`` and one ``end``
through the outbox and a real Mosquitto. A fourth camera, GStreamer's ``videotestsrc``, has
its child killed mid-stream: the camera goes ``reconnecting`` with the reason and is
``running`` again without an agent restart.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from scripts.scenes import crossing_video
from tests.agent_process import AgentProcess, base_config, events_of
from tests.broker import Broker, Received

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("gst-launch-1.0") is None,
                       reason="ffmpeg and gst-launch-1.0 needed (scripts/setup.sh --dev)"),
]

BASE = "edge-agent/test-edge"
QUIET = ["-hide_banner", "-nostats", "-loglevel", "error"]


def cameras(video: Path) -> list[dict[str, Any]]:
    common: dict[str, Any] = {
        "fps": 5, "objects": {"track": ["motorbike"]},
        "tracking": {"max_disappeared": 10}, "reconnect_min_s": 0.5, "reconnect_max_s": 2,
        "snapshots": {"enabled": False},
    }
    size = {"width": 640, "height": 480}
    return [
        {"id": "ffmpeg-raw", **common, "command": {
            "argv": ["ffmpeg", *QUIET, "-re", "-i", str(video), "-f", "rawvideo",
                     "-pix_fmt", "yuv420p", "-"], "format": "yuv420p", **size}},
        {"id": "ffmpeg-mjpeg", **common, "command": {
            "argv": ["ffmpeg", *QUIET, "-re", "-i", str(video), "-f", "mjpeg", "-q:v", "3", "-"],
            "format": "mjpeg"}},
        {"id": "gst-file", **common, "command": {
            "argv": ["gst-launch-1.0", "-q", "filesrc", f"location={video}", "!", "avidemux",
                     "!", "jpegdec", "!", "videoconvert", "!", "video/x-raw,format=NV12", "!",
                     "fdsink", "fd=1", "sync=true"], "format": "nv12", **size}},
        {"id": "gst-testsrc", **common, "motion": {"enabled": False}, "command": {
            "argv": ["gst-launch-1.0", "-q", "videotestsrc", "is-live=true", "pattern=ball", "!",
                     "video/x-raw,format=I420,width=320,height=240,framerate=10/1", "!",
                     "fdsink", "fd=1"], "format": "yuv420p", "width": 320, "height": 240}},
    ]


def statuses(messages: list[Received], source: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages
            if m.topic == f"{BASE}/sources/{source}/status" and m.payload]


def test_command_cameras_through_the_whole_pipeline(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    video = crossing_video(tmp_path / "crossing.avi").path
    rec = recorder(f"{BASE}/#")
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port, cameras=cameras(video)))
    agents.append(agent)
    agent.start()

    def told(source: str) -> bool:
        phases = [e["phase"] for e in events_of(rec.messages, source)]
        return "new" in phases and "end" in phases

    crossing = ["ffmpeg-raw", "ffmpeg-mjpeg", "gst-file"]
    assert rec.wait_for(lambda _m: all(told(s) for s in crossing), timeout=120), (
        {s: [e["phase"] for e in events_of(rec.messages, s)] for s in crossing}, agent.log[-3000:])
    for source in crossing:
        events = events_of(rec.messages, source)
        first_new = next(e for e in events if e["phase"] == "new")
        assert first_new["label"]["id"] == "motorbike"
        assert first_new["source"] == {**first_new["source"], "id": source, "kind": "camera"}
        # One crossing, one story: the first new and the first end are the same object.
        first_end = next(e for e in events if e["phase"] == "end")
        assert first_end["track_id"] == first_new["track_id"]

    # Kill the test source's child mid-stream: reconnecting with the reason, then running.
    assert rec.wait_for(lambda m: any(s["state"] == "running"
                                      for s in statuses(m, "gst-testsrc")), timeout=30)
    found = re.search(r"camera gst-testsrc: started gst-launch-1.0 .* \(pid (\d+)\)", agent.log)
    assert found, agent.log[-2000:]
    os.kill(int(found.group(1)), signal.SIGKILL)
    assert rec.wait_for(lambda m: any(s["state"] == "reconnecting" and
                                      "killed by SIGKILL" in (s["detail"] or "")
                                      for s in statuses(m, "gst-testsrc")), timeout=30), \
        statuses(rec.messages, "gst-testsrc")

    def running_again(m: list[Received]) -> bool:
        states = [s["state"] for s in statuses(m, "gst-testsrc")]
        return "reconnecting" in states and states[-1] == "running" and \
            states.index("reconnecting") < len(states) - 1
    assert rec.wait_for(running_again, timeout=30), statuses(rec.messages, "gst-testsrc")
    assert agent.proc is not None and agent.proc.poll() is None  # no agent restart
    assert agent.stop() == 0
    assert "Traceback" not in agent.log
