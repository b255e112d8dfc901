"""scripts/chaos.py on a short schedule: real agent, broker, camera server, faults injected.

Marked ``soak``: not in the default suite; ``scripts/test.sh --soak`` runs it. The long runs
(``scripts/chaos.py --duration 300``, ``--soak --duration 1800``) produce docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.chaos import REPO, Settings, run
from scripts.harness.broker import MOSQUITTO

pytestmark = [
    pytest.mark.soak,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed"),
    pytest.mark.skipif(not (REPO / "demo" / "street.avi").exists()
                       or not (REPO / "demo" / "sounds.wav").exists(),
                       reason="demo media missing: run scripts/make_demo_media.py"),
]


def test_faults_lose_nothing_beyond_counted_drops(tmp_path: Path) -> None:
    result = run(Settings(duration=75, seed=11, broker_every=25, kill_every=30,
                          camera_every=35, burst_s=8), tmp_path)
    summary = {k: result[k] for k in ("events", "drops_reported", "faults", "processes")}
    assert result["faults"].get("agent kill -9", 0) >= 2, summary
    assert result["faults"].get("broker stop/start", 0) >= 2, summary
    assert result["drained"], "the outbox never drained once the faults stopped"
    # The overflow phase must really drop, and every gap must be a counted drop.
    assert result["drops_counted_total"] > 0, summary
    assert result["missing_equal_drops"], summary
    assert result["lost_unexplained"] == 0, summary
    assert result["events"]["order_violations"] == 0, summary
    assert result["processes"][-1]["exact"], summary
    # Only the in-flight window around a kill or a broker stop may be sent twice.
    assert result["events"]["duplicates"] <= 20 * result["faults_total"], summary


def test_soak_without_faults_delivers_everything_once_and_fast(tmp_path: Path) -> None:
    result = run(Settings(duration=60, seed=1, soak=True), tmp_path)
    summary = {k: result[k] for k in ("events", "drops_reported", "latency_ms", "processes")}
    assert result["drained"], summary
    assert result["events"]["missing"] == 0 and result["drops_counted_total"] == 0, summary
    assert result["events"]["duplicates"] == 0, summary
    assert result["events"]["order_violations"] == 0, summary
    assert result["processes"][-1]["exact"], summary
    assert result["latency_ms"]["all"]["p99"] < 250.0, summary
