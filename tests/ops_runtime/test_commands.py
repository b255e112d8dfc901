"""The command router in-process, against a daemon-like fake that records every change.

Round trips of each command and each kind of refusal, then a 10,000-example hypothesis fuzz:
no exception escapes, every message gets exactly one result, and nothing changes unless the
result says ok.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.media.store import MediaMissing, StoredMedia
from agent.mqtt.commands import MAX_PAYLOAD_BYTES, CommandRouter
from agent.mqtt.config import COMMAND_NAMES, CommandsConfig

BASE = "edge-agent/dev"


class FakeWorker:
    """A source with the optional operations a real camera or microphone may offer."""

    def __init__(self, kind: str, labels: tuple[str, ...] = ("person", "car"),
                 thresholds: bool = True, snapshots: bool = True) -> None:
        self.kind = kind
        self.detection_enabled = True
        self.labels = labels
        self.values: dict[str, Any] = {}
        self.frames = True
        self.snapshots_taken = 0
        if not thresholds:
            self.set_thresholds = None
        if not snapshots:
            self.snapshot_now = None

    def set_thresholds(self, changes: dict[str, Any]) -> dict[str, Any]:  # type: ignore[misc]
        # Like a real worker: check label ids first, then apply everything.
        unknown = [lid for lid in changes.get("labels", {}) if lid not in self.labels]
        if unknown:
            raise ValueError(f"not tracked: {', '.join(unknown)}")
        self.values = {**self.values, **changes}
        return dict(self.values)

    def snapshot_now(self) -> Any:  # type: ignore[misc]
        if not self.frames:
            return None
        self.snapshots_taken += 1
        return SimpleNamespace(id=f"snap-{self.snapshots_taken}")


class FakeEngine:
    def __init__(self) -> None:
        self.enabled = {"r1": True, "r2": True}

    def set_enabled(self, rule_id: str, enabled: bool) -> None:
        if rule_id not in self.enabled:
            raise KeyError(rule_id)
        self.enabled[rule_id] = enabled


@dataclass
class FakeDispatcher:
    engine: FakeEngine | None = field(default_factory=FakeEngine)
    emitted: list[Any] = field(default_factory=list)

    def emit(self, event: Any) -> None:
        self.emitted.append(event)


class FakeMedia:
    """The media store's ``get``: one event with an input image (the store has its own tests)."""

    def get(self, event_id: str, role: str | None = None) -> list[StoredMedia]:
        if event_id != "e1":
            raise MediaMissing(f"no media for event {event_id} on this device")
        if role not in (None, "input"):
            raise MediaMissing(f"event e1 has no media with role {role} (it has: input)")
        return [StoredMedia({"role": "input", "content_type": "image/jpeg", "bytes": 3,
                             "sha256": "x"}, b"\xff\xd8\xff")]


class FakeDaemon:
    def __init__(self, with_rules: bool = True) -> None:
        self.media = FakeMedia()
        self.workers: dict[str, Any] = {
            "cam": FakeWorker("camera"),
            "mic": FakeWorker("microphone", labels=("dog_bark",), snapshots=False),
            "syn": FakeWorker("synthetic", thresholds=False, snapshots=False),
        }
        self.dispatcher = FakeDispatcher(FakeEngine() if with_rules else None)
        self.reloads = 0
        self.stats_requests = 0
        self.runtime_changes: list[tuple[str, str]] = []

    def note_runtime_change(self, source_id: str, what: str) -> None:
        self.runtime_changes.append((source_id, what))

    def request_reload(self) -> None:
        self.reloads += 1

    def request_stats(self) -> None:
        self.stats_requests += 1

    def state(self) -> Any:
        """Everything a command could change, comparable with ==."""
        engine = self.dispatcher.engine
        return (
            {sid: (w.detection_enabled, json.dumps(w.values, sort_keys=True))
             for sid, w in self.workers.items()},
            dict(engine.enabled) if engine else None,
            len(self.dispatcher.emitted), self.reloads, self.stats_requests,
        )


class Harness:
    """A router over a fake daemon; snapshots run synchronously so results are immediate."""

    def __init__(self, config: CommandsConfig | None = None, with_rules: bool = True) -> None:
        self.daemon = FakeDaemon(with_rules)
        self.results: list[tuple[str, dict[str, Any]]] = []
        self.blobs: list[tuple[str, bytes]] = []
        self.router = CommandRouter(BASE, self.daemon, self._publish, config,
                                    run_slow=self._run_now)

    def _publish(self, topic: str, payload: bytes) -> None:
        if topic.startswith(f"{BASE}/result/media/get/"):  # media bytes before the answer
            self.blobs.append((topic, payload))
            return
        self.results.append((topic, json.loads(payload)))

    @staticmethod
    def _run_now(job: Any) -> bool:
        job()
        return True

    def send(self, suffix: str, payload: Any = None) -> dict[str, Any]:
        raw = payload if isinstance(payload, bytes) else (
            b"{}" if payload is None else json.dumps(payload).encode())
        before = len(self.results)
        self.router.handle(f"{BASE}/set/{suffix}", raw)
        assert len(self.results) == before + 1, "exactly one result per command"
        topic, body = self.results[-1]
        assert topic == f"{BASE}/result/{suffix}"
        return body


# -- round trips --------------------------------------------------------------------------


def test_detection_toggles_the_worker_and_echoes_the_request_id() -> None:
    h = Harness()
    body = h.send("sources/cam/detection", {"enabled": False, "request_id": "r-1"})
    assert body == {"request_id": "r-1", "command": "sources.detection", "ok": True,
                    "error": None, "result": {"source": "cam", "enabled": False}}
    assert h.daemon.workers["cam"].detection_enabled is False
    assert h.send("sources/cam/detection", {"enabled": True})["ok"]
    assert h.daemon.workers["cam"].detection_enabled is True


def test_rule_enabled_and_no_rules_configured() -> None:
    h = Harness()
    assert h.send("rules/r1/enabled", {"enabled": False, "request_id": 7})["request_id"] == 7
    assert h.daemon.dispatcher.engine is not None
    assert h.daemon.dispatcher.engine.enabled == {"r1": False, "r2": True}
    body = h.send("rules/nope/enabled", {"enabled": False})
    assert not body["ok"] and body["error"] == "unknown rule nope"
    bare = Harness(with_rules=False)
    body = bare.send("rules/r1/enabled", {"enabled": False})
    assert not body["ok"] and body["error"] == "no rules configured"


def test_thresholds_per_kind_and_all_or_nothing() -> None:
    h = Harness()
    cam = h.daemon.workers["cam"]
    ok = h.send("sources/cam/thresholds",
                {"labels": {"person": {"threshold": 0.8, "min_score": 0.6}}, "request_id": "t"})
    assert ok["ok"], ok
    assert cam.values == {"labels": {"person": {"threshold": 0.8, "min_score": 0.6}}}
    mic = h.send("sources/mic/thresholds",
                 {"min_volume": -45, "labels": {"dog_bark": {"threshold": 0.3}}})
    assert mic["ok"], mic
    assert h.daemon.workers["mic"].values == {"min_volume": -45.0,
                                              "labels": {"dog_bark": {"threshold": 0.3}}}
    before = h.daemon.state()
    refusals = {
        # out of range, wrong type, NaN-free but infinite, positive dBFS, extra key
        "labels.person.threshold": {"labels": {"person": {"threshold": 1.5}}},
        "valid number": {"labels": {"person": {"threshold": "0.5"}}},
        "finite": {"labels": {"person": {"min_score": 1e400}}},
        "less than or equal to 0": {"min_volume": 3},
        "Extra inputs": {"labels": {"person": {"threshold": 0.5, "colour": "red"}}},
        "give threshold": {},
    }
    for needle, payload in refusals.items():
        body = h.send("sources/cam/thresholds", payload)
        assert not body["ok"] and needle in body["error"], (needle, body)
    # One good label and one the camera does not track: nothing applies.
    body = h.send("sources/cam/thresholds", {"labels": {"person": {"threshold": 0.9},
                                                        "zebra": {"threshold": 0.9}}})
    assert not body["ok"] and "zebra" in body["error"]
    # Keys of the other kind are refused, not ignored.
    body = h.send("sources/cam/thresholds", {"min_volume": -40})
    assert not body["ok"] and "camera cam has no min_volume" in body["error"]
    body = h.send("sources/mic/thresholds", {"labels": {"dog_bark": {"min_score": 0.2}}})
    assert not body["ok"] and "labels.dog_bark.min_score" in body["error"]
    assert h.daemon.state() == before
    body = h.send("sources/syn/thresholds", {"threshold": 0.5})
    assert body["error"] == "source syn does not support thresholds"


def test_snapshot_is_emitted_through_the_dispatcher() -> None:
    h = Harness()
    body = h.send("sources/cam/snapshot", {"request_id": "s"})
    assert body["ok"] and body["result"] == {"source": "cam", "event_id": "snap-1"}
    assert [e.id for e in h.daemon.dispatcher.emitted] == ["snap-1"]
    h.daemon.workers["cam"].frames = False
    body = h.send("sources/cam/snapshot")
    assert body["error"] == "camera cam has no frame yet"
    assert h.send("sources/mic/snapshot")["error"] == "source mic takes no snapshots"


def test_reload_and_stats_are_handed_to_the_main_loop() -> None:
    h = Harness()
    assert h.send("config/reload")["result"] == {"queued": True}
    assert h.send("stats", {"request_id": "x"})["ok"]
    assert (h.daemon.reloads, h.daemon.stats_requests) == (1, 1)


def test_an_empty_message_is_ignored_never_executed(caplog: pytest.LogCaptureFixture) -> None:
    """Clearing a retained command (``mosquitto_pub -r -n``) delivers an empty message to
    the agent, not retained: it must not run ``config/reload`` or ``stats`` once more."""
    h = Harness()
    before = h.daemon.state()
    with caplog.at_level(logging.INFO, logger="agent.mqtt.commands"):
        for suffix in ("config/reload", "stats", "sources/cam/snapshot",
                       "sources/cam/detection"):
            h.router.handle(f"{BASE}/set/{suffix}", b"")
    assert h.results == [] and h.daemon.state() == before
    assert caplog.text.count("empty message ignored") == 4
    assert h.send("config/reload")["ok"], "{} still runs a command without arguments"


def test_refusals_each_get_one_result_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness(CommandsConfig(allow=["stats.publish", "sources.detection"]))
    before = h.daemon.state()
    cases = [
        ("sources/cam/detection", b"{not json", "payload is not JSON"),
        ("sources/cam/detection", b"\xff\xfe", "not UTF-8"),
        ("sources/cam/detection", b"[1, 2]", "must be a JSON object"),
        ("sources/cam/detection", b"[" * 50_000 + b"]" * 10_000, "nested too deeply"),
        ("sources/cam/detection", b" " * (MAX_PAYLOAD_BYTES + 1), "payload too large"),
        ("sources/cam/detection", {"enabled": "false"}, "valid boolean"),
        ("sources/cam/detection", {"enabled": False, "extra": 1}, "Extra inputs"),
        ("sources/nope/detection", {"enabled": False}, "unknown source nope"),
        ("sources/cam/explode", {}, "unknown command set/sources/cam/explode"),
        ("", {}, "unknown command"),
        ("config/reload", {}, "not allowed on this device"),
        ("rules/r1/enabled", {"enabled": False}, "not allowed on this device"),
    ]
    for suffix, payload, needle in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="agent.mqtt.commands"):
            if suffix:
                body = h.send(suffix, payload)
            else:
                h.router.handle(f"{BASE}/set", b"{}")
                topic, body = h.results[-1]
                assert topic == f"{BASE}/result"
        assert not body["ok"] and needle in body["error"], (suffix, body)
        assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
    assert h.daemon.state() == before
    assert h.send("stats")["ok"]
    assert h.router.stats() == {"accepted": 1, "rejected": {
        "malformed": 7, "unknown": 3, "unauthorised": 2}}


def test_an_empty_allow_list_refuses_everything() -> None:
    h = Harness(CommandsConfig(allow=[]))
    for suffix in ("stats", "config/reload", "sources/cam/snapshot"):
        assert "not allowed" in h.send(suffix)["error"]
    assert h.daemon.reloads == 0 and not h.daemon.dispatcher.emitted


def test_a_bug_in_a_worker_costs_one_command(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()

    def broken(changes: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    h.daemon.workers["cam"].set_thresholds = broken
    body = h.send("sources/cam/thresholds", {"labels": {"person": {"threshold": 0.5}}})
    assert body["error"] == "internal error: boom"
    assert h.send("stats")["ok"]


def test_snapshots_wait_on_one_short_queue() -> None:
    """The default slow lane answers from its own thread and refuses a flood as busy."""
    import threading

    daemon = FakeDaemon()
    gate = threading.Event()
    results: list[dict[str, Any]] = []
    done = threading.Condition()

    def publish(topic: str, payload: bytes) -> None:
        with done:
            results.append(json.loads(payload))
            done.notify_all()

    def slow_snapshot() -> Any:
        gate.wait(10)
        return SimpleNamespace(id="late")

    daemon.workers["cam"].snapshot_now = slow_snapshot
    router = CommandRouter(BASE, daemon, publish)
    try:
        for _ in range(10):
            router.handle(f"{BASE}/set/sources/cam/snapshot", b"{}")
        with done:
            busy = [r for r in results if not r["ok"]]
        assert busy and all(r["error"].startswith("busy:") for r in busy)
        gate.set()
        with done:
            assert done.wait_for(lambda: len(results) == 10, 10), results
        assert sum(r["ok"] for r in results) == len(daemon.dispatcher.emitted) >= 4
    finally:
        gate.set()
        router.close()


# -- fuzz ---------------------------------------------------------------------------------

SOURCE_IDS = st.sampled_from(["cam", "mic", "syn", "nope", "", "c+m", "ü"])
RULE_IDS = st.sampled_from(["r1", "r2", "nope", ""])
TOPICS = st.one_of(
    st.builds(lambda s: f"sources/{s}/detection", SOURCE_IDS),
    st.builds(lambda s: f"sources/{s}/thresholds", SOURCE_IDS),
    st.builds(lambda s: f"sources/{s}/snapshot", SOURCE_IDS),
    st.builds(lambda r: f"rules/{r}/enabled", RULE_IDS),
    st.just("config/reload"),
    st.just("stats"),
    st.lists(st.text(st.characters(blacklist_characters="\x00#+", blacklist_categories=["Cs"]),
                     max_size=12), min_size=1, max_size=5).map("/".join),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
NUMBER = st.one_of(st.floats(), st.integers(-200, 200), st.booleans(), st.text(max_size=4),
                   st.none())
LABEL_VALUES = st.dictionaries(st.sampled_from(["threshold", "min_score", "min_volume", "x"]),
                               NUMBER, max_size=3)
NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        "request_id": st.one_of(st.text(max_size=200), st.integers(), st.none(), st.booleans()),
        "enabled": st.one_of(st.booleans(), st.none(), st.integers(0, 1), st.text(max_size=5)),
        "threshold": NUMBER,
        "min_volume": NUMBER,
        "labels": st.dictionaries(st.sampled_from(["person", "car", "dog_bark", "zebra", ""]),
                                  LABEL_VALUES | JSON, max_size=3),
        "extra": JSON,
    },
)
PAYLOADS = st.one_of(
    st.binary(max_size=200),
    JSON.map(lambda v: json.dumps(v).encode()),
    NEAR_VALID.map(lambda v: json.dumps(v).encode()),
    st.just(b""),
    st.just(b"x" * (MAX_PAYLOAD_BYTES + 1)),
)

UNIT = st.floats(-0.5, 1.5, allow_nan=False) | st.floats()
DBFS = st.floats(-130, 10, allow_nan=False)
WELL_FORMED = st.one_of(
    st.tuples(st.builds(lambda s: f"sources/{s}/detection", SOURCE_IDS),
              st.fixed_dictionaries({"enabled": st.booleans()})),
    st.tuples(st.builds(lambda r: f"rules/{r}/enabled", RULE_IDS),
              st.fixed_dictionaries({"enabled": st.booleans()})),
    st.tuples(
        st.builds(lambda s: f"sources/{s}/thresholds", SOURCE_IDS),
        st.fixed_dictionaries({}, optional={
            "threshold": UNIT, "min_volume": DBFS,
            "labels": st.dictionaries(
                st.sampled_from(["person", "car", "dog_bark", "zebra"]),
                st.fixed_dictionaries({}, optional={
                    "threshold": UNIT, "min_score": UNIT, "min_volume": DBFS}),
                max_size=2)})),
    st.tuples(st.sampled_from(["sources/cam/snapshot", "sources/mic/snapshot", "config/reload",
                               "stats"]), st.just({})),
    st.tuples(st.just("media/get"), st.fixed_dictionaries(
        {"event_id": st.sampled_from(["e1", "e2", "", "e/1"])},
        optional={"role": st.sampled_from(["input", "crop", None, 3])})),
).flatmap(lambda pair: st.tuples(
    st.just(pair[0]),
    st.one_of(st.just(pair[1]), st.text(max_size=8).map(lambda r: {**pair[1], "request_id": r})),
).map(lambda p: (p[0], json.dumps(p[1]).encode())))
MESSAGES = st.one_of(st.tuples(TOPICS, PAYLOADS), WELL_FORMED)

# Which part of the fake's state each command may change.
_CHANGES = {
    "sources.detection": lambda b, a: b[1:] == a[1:],
    "sources.thresholds": lambda b, a: b[1:] == a[1:],
    "sources.snapshot": lambda b, a: a[2] == b[2] + 1 and (b[:2], b[3:]) == (a[:2], a[3:]),
    "rules.enabled": lambda b, a: (b[0], b[2:]) == (a[0], a[2:]),
    "config.reload": lambda b, a: a[3] == b[3] + 1 and (b[:3], b[4]) == (a[:3], a[4]),
    "stats.publish": lambda b, a: a[4] == b[4] + 1 and b[:4] == a[:4],
    "media.get": lambda b, a: b == a,
}


@pytest.mark.parametrize("examples", [3_000, pytest.param(10_000, marks=pytest.mark.soak)])
def test_fuzzed_commands_never_crash_and_change_nothing_unless_valid(
    caplog: pytest.LogCaptureFixture, examples: int
) -> None:
    """Random (topic, payload) pairs over every command name, mixed with allow-lists:
    3,000 in the default suite, 10,000 in the soak run."""
    counts = {"messages": 0, "ok": 0, "refused": 0}
    by_command: dict[str, int] = dict.fromkeys(COMMAND_NAMES, 0)
    allows = [None, ["stats.publish"], ["sources.detection", "sources.thresholds"]]

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(message=MESSAGES, allow=st.sampled_from(allows))
    def one(message: tuple[str, bytes], allow: list[str] | None) -> None:
        suffix, payload = message
        h = Harness(CommandsConfig(allow=allow))  # type: ignore[arg-type]
        before = h.daemon.state()
        h.router.handle(f"{BASE}/set/{suffix}", payload)  # must not raise
        if payload == b"":  # a cleared retained command: ignored, never executed
            assert h.results == [] and h.daemon.state() == before
            counts["messages"] += 1
            return
        assert len(h.results) == 1, "exactly one result per message"
        topic, body = h.results[0]
        assert topic.startswith(f"{BASE}/result")
        assert set(body) == {"request_id", "command", "ok", "error", "result"}
        after = h.daemon.state()
        counts["messages"] += 1
        if body["ok"]:
            counts["ok"] += 1
            name = body["command"]
            by_command[name] += 1
            assert allow is None or name in allow
            assert _CHANGES[name](before, after), (suffix, payload, before, after)
        else:
            counts["refused"] += 1
            assert isinstance(body["error"], str) and body["error"]
            assert after == before, (suffix, payload, body)
        assert h.router.stats()["rejected"].get("internal", 0) == 0, body

    with caplog.at_level(logging.ERROR, logger="agent.mqtt.commands"):
        one()
    assert counts["messages"] >= examples
    print(f"fuzz: {counts}; accepted by command: {by_command}")
    # The generators reach the handlers, not only the parsers.
    assert counts["ok"] > examples // 20 and counts["refused"] > examples // 2, (counts,
                                                                                by_command)
    assert all(n > 0 for n in by_command.values()), by_command
    assert not caplog.records, [r.getMessage() for r in caplog.records[:3]]


def test_media_get_sends_the_bytes_then_the_answer_on_the_result_convention() -> None:
    h = Harness()
    body = h.send("media/get", {"event_id": "e1", "request_id": "m1"})
    assert body["ok"] and body["request_id"] == "m1"
    assert h.blobs == [(f"{BASE}/result/media/get/e1/input", b"\xff\xd8\xff")]
    assert body["result"]["media"][0]["topic"] == f"{BASE}/result/media/get/e1/input"
    missing = h.send("media/get", {"event_id": "e2"})
    assert not missing["ok"] and "no media for event e2" in missing["error"]
    assert h.router.stats()["rejected"]["not_found"] == 1
    wrong = h.send("media/get", {"event_id": "../e1"})
    assert not wrong["ok"] and "event_id" in wrong["error"]


def test_mqtt5_response_topic_and_correlation_data_are_honoured_for_every_command() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    sent: list[tuple[str, bytes, Any]] = []
    router = CommandRouter(BASE, FakeDaemon(), lambda t, p, props=None: sent.append(
        (t, p, props)), run_slow=Harness._run_now)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "clients/c1/reply"
    props.CorrelationData = b"corr-1"
    router.handle(f"{BASE}/set/media/get", b'{"event_id": "e1"}', props)
    router.handle(f"{BASE}/set/stats", b"{}", props)
    assert [t for t, _, _ in sent] == ["clients/c1/reply"] * 3
    blob, answer, stats = sent
    assert blob[1] == b"\xff\xd8\xff" and blob[2].ContentType == "image/jpeg"
    assert dict(blob[2].UserProperty) == {"event_id": "e1", "role": "input", "sha256": "x"}
    assert json.loads(answer[1])["ok"] and answer[2].ContentType == "application/json"
    assert all(p.CorrelationData == b"corr-1" for _, _, p in sent)
    assert json.loads(stats[1])["command"] == "stats.publish"
    # A wildcard is no topic name: the answer goes to result/ instead.
    bad = Properties(PacketTypes.PUBLISH)
    bad.ResponseTopic = "clients/#"
    router.handle(f"{BASE}/set/stats", b"{}", bad)
    assert sent[-1][0] == f"{BASE}/result/stats"
