"""The agent sends nothing anywhere but the configured broker and cameras.

onnxruntime 1.32 starts Microsoft's telemetry when it loads (a device id and an event
database under ``$HOME/.cache/Microsoft``, DNS look-ups of ``*.events.data.microsoft.com``).
An agent run with both ONNX models loaded is traced with strace: no socket but the broker's
on loopback, no DNS query, and nothing written under an empty ``$HOME``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from scripts.harness.agent_process import REPO, base_config
from scripts.harness.broker import Broker

STRACE = shutil.which("strace")


def child_pid(parent: int, timeout: float = 10.0) -> int:
    """The traced agent's pid: strace's only child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError("strace started no agent")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (scripts/setup.sh --dev)")
def test_an_agent_run_makes_no_dns_query_and_writes_nothing_under_home(
    tmp_path: Path, broker: Broker
) -> None:
    video = REPO / "demo" / "street.avi"
    sound = REPO / "demo" / "sounds.wav"
    if not (video.is_file() and sound.is_file()):
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    config = base_config(
        tmp_path, broker.port,
        cameras=[{"id": "cam", "url": str(video), "loop": True, "fps": 2}],
        microphones=[{"id": "mic", "file": str(sound), "loop": True}],
    )
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    home = tmp_path / "home"
    home.mkdir()
    trace = tmp_path / "trace.txt"
    log = tmp_path / "agent.log"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EDGE_AGENT_", "XDG_", "ORT_"))}
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1"})
    assert STRACE is not None
    with log.open("wb") as out:
        tracer = subprocess.Popen(
            [STRACE, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg", "-o",
             str(trace), sys.executable, "-m", "agent", "run", "-c", str(config_path)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            agent = child_pid(tracer.pid)
            deadline = time.monotonic() + 120
            text = ""
            while time.monotonic() < deadline and not (
                    "camera cam: running" in text and "microphone mic: running" in text):
                assert tracer.poll() is None, log.read_text()
                time.sleep(0.2)
                text = log.read_text(errors="replace")
            assert "camera cam: running" in text and "microphone mic: running" in text, text
            time.sleep(3)  # let the models run and any telemetry upload start
            os.kill(agent, signal.SIGTERM)
            assert tracer.wait(30) == 0, log.read_text()
        finally:
            if tracer.poll() is None:
                tracer.kill()
                tracer.wait()
    calls = trace.read_text().splitlines()
    inet = [c for c in calls if "AF_INET" in c]
    assert any(f"htons({broker.port})" in c and '"127.0.0.1"' in c for c in inet), \
        "strace saw the broker connection (the trace works)"
    dns = [c for c in calls if "htons(53)" in c or re.search(r"nscd|resolve", c)]
    assert not dns, dns
    elsewhere = [c for c in inet if not re.search(r'inet_addr\("127\.|inet_pton\(AF_INET6, "::1"',
                                                  c)]
    assert not elsewhere, elsewhere
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    assert written == [], f"written under $HOME: {written}"
