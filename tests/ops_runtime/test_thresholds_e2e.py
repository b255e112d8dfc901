"""The thresholds command on a real camera and a real microphone of a running agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scripts.harness.agent_process import REPO, AgentProcess, base_config
from scripts.harness.broker import Broker
from tests.ops_runtime.test_commands_e2e import command


def test_thresholds_change_at_runtime_all_or_nothing(
    tmp_path: Path, broker: Broker, recorder: Any
) -> None:
    video = REPO / "demo" / "street.avi"
    sound = REPO / "demo" / "sounds.wav"
    if not (video.is_file() and sound.is_file()):
        import subprocess
        import sys

        subprocess.run([sys.executable, str(REPO / "scripts" / "make_demo_media.py")],
                       check=True, capture_output=True)
    rec = recorder("edge-agent/test-edge/#")
    config = base_config(
        tmp_path, broker.port,
        cameras=[{"id": "cam", "url": str(video), "loop": True, "fps": 2,
                  "objects": {"track": ["person", "cup"]}}],
        microphones=[{"id": "mic", "file": str(sound), "loop": True,
                      "listen": ["speech", "siren"]}],
    )
    agent = AgentProcess(tmp_path, config).start()
    try:
        assert agent.wait_log("camera cam: running", 60), agent.log
        assert agent.wait_log("microphone mic: running", 60), agent.log

        ok = command(rec, "sources/cam/thresholds",
                     {"request_id": "t1", "labels": {"person": {"threshold": 0.9,
                                                                "min_score": 0.6}}})
        assert ok["ok"], ok
        assert ok["result"]["labels"]["person"] == {"threshold": 0.9, "min_score": 0.6}

        bad = command(rec, "sources/cam/thresholds",
                      {"request_id": "t2", "labels": {"person": {"threshold": 0.5},
                                                      "unicorn": {"threshold": 0.5}}})
        assert not bad["ok"] and "unicorn" in bad["error"]
        again = command(rec, "sources/cam/thresholds",
                        {"request_id": "t3", "labels": {"person": {"min_score": 0.6}}})
        assert again["result"]["labels"]["person"]["threshold"] == 0.9, (
            "a refused change must leave the earlier values untouched")

        mic = command(rec, "sources/mic/thresholds",
                      {"request_id": "m1", "min_volume": -50,
                       "labels": {"siren": {"threshold": 0.8}}})
        assert mic["ok"], mic
        assert mic["result"]["labels"]["siren"]["threshold"] == 0.8
        assert mic["result"]["labels"]["speech"]["min_volume"] == -50
        assert mic["result"]["gate_dbfs"] == -50
        refused = command(rec, "sources/mic/thresholds",
                          {"request_id": "m2", "labels": {"dog": {"threshold": 0.1}}})
        assert not refused["ok"] and "does not listen for dog" in refused["error"]
    finally:
        assert agent.stop() == 0
