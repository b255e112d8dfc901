"""Stopping the agent, as systemd does it: SIGTERM, and what the broker says afterwards.

A stop must end the process within 5 s whatever a native library is doing (a microphone
whose sound server died blocks PortAudio), and it must leave every retained status reading
``stopped``, so a dashboard never shows a stopped device's sources as ``running``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from scripts.harness.agent_process import AgentProcess, base_config
from scripts.harness.broker import Broker, Recorder
from scripts.harness.jack import stop_jackd
from tests.audio.samples import models_dir  # noqa: F401  (fixture)
from tests.audio.test_jack import _start_jackd

SOURCES = ["s1", "s2", "s3"]


def _retained(broker: Broker, sources: list[str]) -> dict[str, str]:
    """The retained status of the device and of each source, as a fresh subscriber sees it."""
    rec = Recorder(broker, ["edge-agent/test-edge/status",
                            "edge-agent/test-edge/sources/+/status"])
    try:
        rec.wait_for(lambda ms: len(ms) >= 1 + len(sources), 5)
        time.sleep(0.2)  # retained messages arrive together; let the last ones in
        states: dict[str, str] = {}
        for m in rec.messages:
            parts = m.topic.split("/")  # edge-agent/test-edge[/sources/ID]/status
            if parts[2] == "sources":
                states[parts[3]] = json.loads(m.payload)["state"]
            else:
                states["device"] = m.payload.decode()
        return states
    finally:
        rec.close()


# Eight stops in the default suite, twenty in the soak run.
@pytest.mark.parametrize("stops", [8, pytest.param(20, marks=pytest.mark.soak)])
def test_clean_stops_leave_every_retained_status_stopped(
    tmp_path: Path, broker: Broker, stops: int
) -> None:
    unclean = []
    logs = []
    for run in range(stops):
        workdir = tmp_path / f"run{run}"  # a log of its own, same outbox
        workdir.mkdir()
        config = base_config(tmp_path, broker.port,
                             synthetic=[{"id": sid, "rate": 20} for sid in SOURCES])
        agent = AgentProcess(workdir, config).start()
        logs.append(agent)
        try:
            assert agent.wait_log("mqtt: connected", 20), agent.log
            # Every source is running and says so on the broker before the stop.
            rec = Recorder(broker, ["edge-agent/test-edge/sources/+/status"])
            try:
                assert rec.wait_for(lambda ms: {
                    json.loads(m.payload)["source_id"] for m in ms
                    if json.loads(m.payload)["state"] == "running"} == set(SOURCES), 20)
            finally:
                rec.close()
        finally:
            started = time.monotonic()
            assert agent.stop() == 0
            assert time.monotonic() - started < 5
        states = _retained(broker, SOURCES)
        if states != {"device": "stopped", **{sid: "stopped" for sid in SOURCES}}:
            unclean.append((run, states))
    assert not unclean, unclean
    assert not [a.log for a in logs if "unclean" in a.log]


def test_sigterm_after_the_sound_server_died_exits_within_5_s(
    tmp_path: Path, broker: Broker, models_dir: Path  # noqa: F811
) -> None:
    name = f"edgeagentstop{os.getpid()}"
    jackd = _start_jackd(name)
    config = base_config(tmp_path, broker.port, microphones=[{
        "id": "mic", "device": "system", "reconnect_min_s": 0.2, "reconnect_max_s": 0.5}])
    agent = AgentProcess(tmp_path, config, env={"JACK_DEFAULT_SERVER": name,
                                                "JACK_NO_START_SERVER": "1"})
    try:
        agent.start()
        assert agent.wait_log("microphone mic: running", 60), agent.log
        stop_jackd(jackd)  # the sound server dies under the running stream
        assert agent.wait_log("microphone mic: reconnecting", 30), agent.log
        time.sleep(1.0)  # the stuck close is under way
        assert agent.proc is not None
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = agent.proc.wait(15)
        took = time.monotonic() - started
    finally:
        stop_jackd(jackd)
        agent.close()
    assert took < 5.0, f"exit took {took:.1f} s\n{agent.log}"
    assert code == 0
    assert "stopped" in agent.log.splitlines()[-1] or "leaving without them" in agent.log
    states = _retained(broker, ["mic"])
    assert states.get("mic") == "stopped" and states.get("device") == "stopped", states


HANGING_STOP = r"""
import sys, threading
from agent.outbox.store import Outbox
Outbox.close = lambda self: threading.Event().wait()  # a stop step that never returns
from agent.cli import main
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


def test_a_stop_stuck_anywhere_still_ends_the_process_within_5_s(
    tmp_path: Path, broker: Broker
) -> None:
    import subprocess
    import sys

    from scripts.harness.agent_process import REPO

    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port,
                                               synthetic=[{"id": "s1", "rate": 5}]))
    log = agent.log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-c", HANGING_STOP, str(agent.config_path)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    agent.proc = proc
    try:
        assert agent.wait_log("mqtt: connected", 20), agent.log
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - started
    finally:
        agent.close()
        log.close()
    assert took < 5.0 and code == 0, (took, code, agent.log)
    line = next(x for x in agent.log.splitlines() if "leaving without them" in x)
    assert " WARNING " in line
    assert "not finished 4.0 s after the stop signal, still closing the outbox" in line
    assert "outbox is durable" in line
    # The statuses went out before the stuck step: the broker says stopped.
    assert _retained(broker, ["s1"]) == {"device": "stopped", "s1": "stopped"}


def test_a_stop_the_broker_does_not_acknowledge_is_logged_unclean_and_reads_offline(
    tmp_path: Path, broker: Broker
) -> None:
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port,
                                               synthetic=[{"id": "s1", "rate": 5}])).start()
    assert broker.proc is not None
    try:
        assert agent.wait_log("synthetic s1: running", 20), agent.log
        assert agent.wait_log("mqtt: connected", 20), agent.log
        time.sleep(0.5)  # the running status is on the broker
        broker.proc.send_signal(signal.SIGSTOP)  # the connection stays up, nothing answers
        started = time.monotonic()
        code = agent.stop()
        took = time.monotonic() - started
    finally:
        broker.proc.send_signal(signal.SIGCONT)
        agent.close()
    assert code == 0 and took < 5.0, (code, took)
    line = next(x for x in agent.log.splitlines() if "unclean stop" in x)
    assert " WARNING " in line and "did not acknowledge" in line
    assert agent.log.splitlines()[-1].endswith(
        "stopped (unclean: the final statuses did not all reach the broker)")
    # The broker saw the connection close without DISCONNECT: the last will says offline,
    # never a stale online.
    deadline = time.monotonic() + 10
    while (state := _retained(broker, ["s1"]).get("device")) != "offline":
        assert time.monotonic() < deadline, state
        time.sleep(0.5)


def test_a_stop_signalled_to_the_whole_group_is_not_a_lost_microphone(
    tmp_path: Path, broker: Broker, models_dir: Path  # noqa: F811
) -> None:
    """systemd's stop sends SIGTERM to every process of the unit, capture children too."""
    psutil = __import__("pytest").importorskip("psutil")
    name = f"edgeagentgroup{os.getpid()}"
    jackd = _start_jackd(name)
    config = base_config(tmp_path, broker.port, microphones=[{"id": "mic", "device": "system"}])
    agent = AgentProcess(tmp_path, config, env={"JACK_DEFAULT_SERVER": name,
                                                "JACK_NO_START_SERVER": "1"})
    try:
        agent.start()
        assert agent.wait_log("microphone mic: running", 60), agent.log
        assert agent.proc is not None
        children = psutil.Process(agent.proc.pid).children(recursive=True)
        assert children, "the microphone captures in a child process"
        # The children first, and a second early: signals to a group arrive in any order.
        for child in children:
            child.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        agent.signal(signal.SIGTERM)
        started = time.monotonic()
        code = agent.proc.wait(15)
        took = time.monotonic() - started
        time.sleep(1.0)  # a child outliving the agent notices within 0.5 s
        left = [c.pid for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        agent.close()
        stop_jackd(jackd)
    assert code == 0 and took < 5.0, (code, took)
    assert not left, f"capture children left running: {left}"
    mic_lines = [x for x in agent.log.splitlines() if "microphone mic" in x]
    assert not [x for x in mic_lines if " WARNING " in x or "reconnecting" in x], mic_lines
    assert _retained(broker, ["mic"]) == {"device": "stopped", "mic": "stopped"}
