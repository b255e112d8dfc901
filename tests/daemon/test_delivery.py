"""The backbone end to end: a real agent process, a real Mosquitto, faults injected."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker, Recorder

TOPIC = "edge-agent/test-edge/#"


def synthetic(rate: float, count: int | None = None, sid: str = "s1") -> list[dict[str, Any]]:
    source: dict[str, Any] = {"id": sid, "rate": rate}
    if count is not None:
        source["count"] = count
    return [source]


def seqs(events: list[dict[str, Any]], run: str | None = None) -> list[int]:
    return [e["seq"] for e in events if run is None or e["run_id"] == run]


def outbox_drained(messages: list[Any]) -> bool:
    """The latest stats message says the outbox is empty."""
    for m in reversed(messages):
        if m.topic.endswith("/stats"):
            stats = json.loads(m.payload)
            return bool(stats["outbox"]["depth"] == 0 and stats["outbox"]["in_flight"] == 0)
    return False


def status_values(rec: Recorder) -> list[str]:
    return [m.payload.decode() for m in rec.on("edge-agent/test-edge/status")]


def test_events_arrive_once_in_order_with_online_status(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(TOPIC)
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port,
                                               synthetic=synthetic(100, 50))).start()
    agents.append(agent)
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= 50, 30), agent.log
    events = events_of(rec.messages)
    assert seqs(events) == list(range(50))
    assert len({e["id"] for e in events}) == 50
    assert "online" in status_values(rec)

    def source_states(ms: list[Any]) -> list[str]:
        return [json.loads(m.payload)["state"] for m in rec.on("edge-agent/test-edge/sources/s1")]

    assert rec.wait_for(lambda ms: source_states(ms)[-1:] == ["ended"], 10), source_states([])
    assert source_states([])[0] in ("starting", "running")


def test_clean_stop_says_stopped_and_exits_quickly(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(TOPIC)
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port,
                                               synthetic=synthetic(20))).start()
    agents.append(agent)
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= 5, 30), agent.log
    t0 = time.monotonic()
    assert agent.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 5.0, "SIGTERM must stop the agent within 5 s"
    assert rec.wait_for(lambda ms: "stopped" in status_values(rec), 5)
    assert "offline" not in status_values(rec), "a clean stop must not fire the last will"


def test_kill9_fires_the_last_will(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(TOPIC)
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port)).start()
    agents.append(agent)
    assert rec.wait_for(lambda ms: "online" in status_values(rec), 30), agent.log
    agent.kill9()
    assert rec.wait_for(lambda ms: status_values(rec)[-1:] == ["offline"], 15)


def test_broker_outage_loses_nothing(tmp_path: Path, agents: list[AgentProcess]) -> None:
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", persistent=True)
    broker.start()
    rec = Recorder(broker, [TOPIC], client_id="outage-recorder")
    try:
        agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port,
                                                   synthetic=synthetic(100, 600))).start()
        agents.append(agent)
        assert rec.wait_for(lambda ms: len(events_of(ms)) >= 100, 30), agent.log
        broker.stop()
        time.sleep(2.0)  # the agent keeps producing into its outbox meanwhile
        broker.start()
        assert rec.wait_for(lambda ms: len({e["id"] for e in events_of(ms)}) >= 600, 60), (
            f"got {len({e['id'] for e in events_of(rec.messages)})} of 600\n{agent.log}"
        )
        events = events_of(rec.messages)
        assert sorted(set(seqs(events))) == list(range(600))
        assert "connection to 127.0.0.1" in agent.log and "lost" in agent.log
    finally:
        rec.close()
        broker.stop()


def test_kill9_with_a_backlog_then_restart_loses_nothing(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", persistent=True)
    port = broker.port  # broker down: everything the agent produces waits in the outbox
    config = base_config(tmp_path, port, synthetic=synthetic(400, 300))
    first = AgentProcess(tmp_path, config).start()
    agents.append(first)
    assert first.wait_log("synthetic s1: ended", 30), first.log
    first.kill9()  # 300 events durable in the outbox, none delivered
    broker.start()
    rec = Recorder(broker, [TOPIC], client_id="kill-recorder")
    try:
        second = AgentProcess(tmp_path, config).start()  # produces another 300, new run id
        agents.append(second)
        assert rec.wait_for(lambda ms: len({e["id"] for e in events_of(ms)}) >= 600, 60), (
            f"got {len({e['id'] for e in events_of(rec.messages)})} of 600\n{second.log}"
        )
        events = events_of(rec.messages)
        runs = sorted({e["run_id"] for e in events})
        assert len(runs) == 2
        for run in runs:
            got = seqs(events, run)
            assert sorted(set(got)) == list(range(300)), f"run {run} lost events"
            assert got == sorted(got), "order per source must hold across a restart"
    finally:
        rec.close()
        broker.stop()


def test_kill9_mid_stream_loses_nothing_acknowledged(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", persistent=True)
    broker.start()
    rec = Recorder(broker, [TOPIC], client_id="mid-recorder")
    try:
        config = base_config(tmp_path, broker.port, synthetic=synthetic(300))
        first = AgentProcess(tmp_path, config).start()
        agents.append(first)
        assert rec.wait_for(lambda ms: len(events_of(ms)) >= 200, 30), first.log
        first.kill9()
        run1 = events_of(rec.messages)[0]["run_id"]
        second = AgentProcess(tmp_path, base_config(tmp_path, broker.port)).start()
        agents.append(second)
        # The restarted agent (no sources now) drains what the first left behind.
        assert rec.wait_for(lambda ms: outbox_drained(ms), 30), second.log
        got = seqs(events_of(rec.messages), run1)
        assert got, "nothing from the first run arrived"
        assert sorted(set(got)) == list(range(max(got) + 1)), "a gap means a lost event"
        dupes = len(got) - len(set(got))
        assert dupes <= 20, f"{dupes} duplicates; only the in-flight window may repeat"
    finally:
        rec.close()
        broker.stop()


def test_unreachable_broker_is_reported_and_events_kept(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = AgentProcess(tmp_path, base_config(tmp_path, port, synthetic=synthetic(50, 20))
                         ).start()
    agents.append(agent)
    assert agent.wait_log(f"mqtt: cannot connect to 127.0.0.1:{port}: Connection refused; "
                          "retrying in", 20), agent.log
    assert agent.wait_log("synthetic s1: ended", 20)
    assert agent.stop() == 0
    from agent.outbox.config import OutboxConfig
    from agent.outbox.store import Outbox

    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox"))
    assert outbox.stats().depth == 20
    outbox.close()


def test_wrong_credentials_give_one_clear_line(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    import subprocess

    pwfile = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pwfile), "edge", "right-password"],
                   check=True, capture_output=True)
    pwfile.chmod(0o644)
    (tmp_path / "b").mkdir()
    broker = Broker(tmp_path / "b", extra_conf=f"allow_anonymous false\npassword_file {pwfile}\n")
    broker.start()
    try:
        secret = tmp_path / "secret"
        secret.write_text("wrong-password\n")
        agent = AgentProcess(tmp_path, base_config(
            tmp_path, broker.port,
            mqtt={"username": "edge", "password_file": str(secret)})).start()
        agents.append(agent)
        assert agent.wait_log("refused the connection", 20), agent.log
        assert "wrong-password" not in agent.log
    finally:
        broker.stop()


def test_unwritable_outbox_is_a_clear_error(tmp_path: Path, agents: list[AgentProcess]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    agent = AgentProcess(tmp_path, base_config(tmp_path, 1883,
                                               outbox={"path": str(blocker / "outbox")})).start()
    agents.append(agent)
    assert agent.proc is not None
    rc = agent.proc.wait(20)
    # Found by the configuration check now (exit 78, like check-config); an outbox that
    # fails only when opened (in use, not a database) is 73: tests/config/test_hostile.py.
    assert rc == 78, agent.log
    assert "outbox.path" in agent.log and str(blocker) in agent.log
    assert "Traceback" not in agent.log


def test_sighup_reload_applies_sources_and_keeps_running_on_a_bad_file(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess]
) -> None:
    rec = recorder(TOPIC)
    config = base_config(tmp_path, broker.port, synthetic=synthetic(20, sid="a"))
    agent = AgentProcess(tmp_path, config).start()
    agents.append(agent)
    assert rec.wait_for(lambda ms: len(events_of(ms, "a")) >= 3, 30), agent.log
    agent.write_config({**config, "synthetic": synthetic(20, sid="a") + synthetic(20, sid="b")})
    agent.signal(signal.SIGHUP)
    assert rec.wait_for(lambda ms: len(events_of(ms, "b")) >= 3, 30), agent.log
    agent.config_path.write_text("mqtt:\n  port: [oops\n")
    agent.signal(signal.SIGHUP)
    assert agent.wait_log("keeping the running config", 10), agent.log
    n = len(events_of(rec.messages, "b"))
    assert rec.wait_for(lambda ms: len(events_of(ms, "b")) >= n + 3, 30)


def test_systemd_notifications(tmp_path: Path, broker: Broker, agents: list[AgentProcess]) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.2)
    agent = AgentProcess(tmp_path, base_config(tmp_path, broker.port, synthetic=synthetic(5)),
                         env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1500000"}).start()
    agents.append(agent)
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not {"READY=1", "WATCHDOG=1"} <= set(seen):
        with contextlib.suppress(TimeoutError):
            seen.append(sock.recv(4096).decode())
    assert agent.stop() == 0
    while True:
        try:
            seen.append(sock.recv(4096).decode())
        except (TimeoutError, OSError):
            break
    sock.close()
    assert "READY=1" in seen and "WATCHDOG=1" in seen and "STOPPING=1" in seen
    assert any(m.startswith("STATUS=") for m in seen)


def test_a_missing_label_catalogue_is_one_clear_line(
    tmp_path: Path, agents: list[AgentProcess]
) -> None:
    labels = tmp_path / "models" / "labels"
    labels.mkdir(parents=True)
    (labels / "coco.csv").write_text("garbage\n")  # present but broken
    agent = AgentProcess(tmp_path, base_config(tmp_path, 1883,
                                               models={"dir": str(tmp_path / "models")})).start()
    agents.append(agent)
    assert agent.proc is not None
    assert agent.proc.wait(20) == 78, agent.log
    assert "label catalogue:" in agent.log and "coco.csv" in agent.log
    assert "Traceback" not in agent.log
