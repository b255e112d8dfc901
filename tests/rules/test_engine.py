"""Rule engine behaviour a user would notice: forming, extending, closing, restarts, control."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.events.schema import CompositeEvent, LabelName, Media
from agent.rules.config import RuleConfig
from agent.rules.engine import to_ms
from tests.rules.helpers import T0_MS, Driver, make_event, rule


def _ids(composite: CompositeEvent) -> list[str]:
    return [e.id for e in composite.events]


def test_forms_extends_and_finalises_on_event_time() -> None:
    d = Driver([rule(window_seconds=30, min_events=3)], None, update_interval_seconds=0)
    e = [make_event(i, i * 10_000) for i in range(5)]
    assert d.process(e[0]) == [] and d.process(e[1]) == []
    [formed] = d.process(e[2])
    assert formed.status == "open" and _ids(formed) == [x.id for x in e[:3]]
    assert formed.group_key == "edge-01:person"
    assert to_ms(formed.started_at) == T0_MS
    [update] = d.process(e[3])
    # An update carries what joined since the last message, and the whole count.
    assert update.id == formed.id and _ids(update) == [e[3].id] and update.event_count == 4
    # Minutes of window pass in no time: the clock is manual.
    d.at(30_000 + 30_000 - 1)
    assert d.tick() == []
    d.at(30_000 + 30_000)
    [final] = d.tick()
    assert final.id == formed.id and final.status == "final"
    assert _ids(final) == [x.id for x in e[:4]] and final.event_count == 4  # every member
    assert final.ended_at is not None
    assert to_ms(final.ended_at) == T0_MS + 60_000  # newest member + window
    # A later event starts afresh.
    assert d.process(make_event(9, 70_000)) == []


def test_late_event_within_window_counts_and_moves_started_at() -> None:
    d = Driver([rule(window_seconds=10, min_events=2)], None, update_interval_seconds=0)
    d.at(5_000)
    d.process(make_event(0, 5_000))
    [formed] = d.process(make_event(1, 1_000))  # arrives after, happened before
    assert to_ms(formed.started_at) == T0_MS + 1_000
    assert [to_ms(e.timestamp) for e in formed.events] == [T0_MS + 1_000, T0_MS + 5_000]
    assert d.process(make_event(2, -6_000)) == []  # more than a window before now: late
    assert d.engine.stats()["r1"]["late"] == 1


def test_an_event_counts_once_and_redelivery_is_ignored() -> None:
    d = Driver([rule(min_events=2)], None, update_interval_seconds=0)
    e0 = make_event(0, 0)
    d.process(e0)
    assert d.process(e0) == []
    [formed] = d.process(make_event(1, 100))
    assert len(formed.events) == 2
    assert d.process(e0) == []
    assert d.engine.stats()["r1"]["duplicates"] == 2


def test_tracked_objects_count_once_per_track() -> None:
    d = Driver([rule(min_events=2)], None, update_interval_seconds=0)
    d.process(make_event(0, 0, track_id="7", phase="new"))
    assert d.process(make_event(1, 500, track_id="7", phase="update")) == []
    assert d.process(make_event(2, 900, track_id="7", phase="end")) == []
    # First seen for a track without its "new" counts too.
    [formed] = d.process(make_event(3, 1_000, track_id="8", phase="update"))
    assert [e.track_id for e in formed.events] == ["7", "8"]
    assert d.engine.stats()["r1"]["repeats"] == 2


def test_cooldown_on_event_time() -> None:
    d = Driver([rule(window_seconds=5, min_events=1, cooldown_seconds=20)], None)
    [first] = d.process(make_event(0, 0))
    d.at(5_000)
    [final] = d.tick()
    assert final.id == first.id and final.ended_at is not None
    assert to_ms(final.ended_at) == T0_MS + 5_000
    assert d.process(make_event(1, 24_999)) == []  # before ended_at + cooldown
    [second] = d.process(make_event(2, 25_000))
    assert second.id != first.id
    assert d.engine.stats()["r1"]["suppressed"] == 1


def test_cross_modal_rule_glass_heard_and_person_seen() -> None:
    glass_and_person = rule(
        "glass-person", window_seconds=20, min_events=2, group_by="device",
        include_label_ids=["glass", "person"], include_mic_ids=["mic-1"],
        require_labels=["glass", "person"],
    )
    d = Driver([glass_and_person], None, label_names=lambda i: LabelName(en="Glass break",
                                                                          ko="유리 깨짐")
               if i == "glass" else None)
    assert d.process(make_event(0, 0, label="glass", source="mic-1")) == []
    assert d.process(make_event(1, 1_000, label="glass", source="mic-1")) == []
    assert d.process(make_event(2, 2_000, label="glass", source="mic-2")) == []  # not mic-1
    [formed] = d.process(make_event(3, 15_000, label="person", source="cam-2"))
    assert formed.group_key == "edge-01"
    assert [m.id for m in formed.mics] == ["mic-1"]
    assert [c.id for c in formed.cameras] == ["cam-2"]
    assert [(x.id, x.name.en, x.active) for x in formed.labels] == [
        ("glass", "Glass break", True), ("person", "person", True)]
    assert formed.rule.require_labels == ["glass", "person"]
    # The payload is the JSON the consumer reads, and it validates.
    again = CompositeEvent.model_validate_json(formed.to_json())
    assert again == CompositeEvent.model_validate(formed.model_dump())


def test_payload_has_no_media_bytes() -> None:
    clip = Media(role="clip", content_type="audio/wav", bytes=3, sha256="ab", data="AAAA")
    event = make_event(0, 0, source="mic-1").model_copy(update={"audio": clip})
    d = Driver([rule(min_events=1)], None)
    [formed] = d.process(event)
    assert formed.events[0].audio is not None and formed.events[0].audio.data is None
    assert formed.events[0].audio.sha256 == "ab"


@pytest.mark.parametrize(
    ("group_by", "keys"),
    [
        ("label_id", {"edge-01:person", "edge-01:car"}),
        ("source_id", {"edge-01:cam-1", "edge-01:mic-1"}),
        ("label_and_source", {"edge-01:person:cam-1", "edge-01:car:cam-1",
                              "edge-01:person:mic-1"}),
        ("device", {"edge-01"}),
        ("use_case", {"edge-01:default", "edge-01:safety"}),
        ("metadata.zone", {"edge-01:a", "edge-01:7", "edge-01:true"}),
        ("none", {"edge-01:all"}),
    ],
)
def test_every_grouping_strategy(group_by: str, keys: set[str]) -> None:
    d = Driver([rule(min_events=1, group_by=group_by)], None)
    specs = [
        ("person", "cam-1", "default", {"zone": "a"}),
        ("car", "cam-1", "safety", {"zone": 7}),
        ("person", "mic-1", "default", {"zone": True}),
        ("person", "cam-1", "default", {}),
    ]
    for n, (label, source, use_case, metadata) in enumerate(specs):
        d.process(make_event(n, n, label=label, source=source, use_case=use_case,
                             metadata=metadata))  # type: ignore[arg-type]
    assert {c.group_key for c in d.latest.values()} == keys


def test_restart_mid_window_neither_loses_nor_double_counts(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=60, min_events=3)], tmp_path, update_interval_seconds=0)
    d.process(make_event(0, 0), make_event(1, 1_000))
    d.restart()
    [formed] = d.process(make_event(2, 2_000))
    assert len(formed.events) == 3
    d.restart()
    assert d.process(make_event(1, 1_000)) == []  # a copy of a counted event
    [update] = d.process(make_event(3, 3_000))
    # The first update after a restart carries every member again (what was handed out
    # before is not known member by member).
    assert update.id == formed.id and len(update.events) == 4 and update.event_count == 4
    d.restart()
    d.at(63_000)
    [final] = d.tick()
    assert final.id == formed.id and final.status == "final" and len(final.events) == 4
    d.restart()
    assert d.tick() == []  # a final is handed out once


def test_update_interval_coalesces_open_updates() -> None:
    d = Driver([rule(window_seconds=60, min_events=1)], None, update_interval_seconds=1)
    [formed] = d.process(make_event(0, 0))
    assert d.process(make_event(1, 100)) == []  # owed, not lost
    d.at(1_000)
    [update] = d.tick()
    assert update.id == formed.id and _ids(update) == [make_event(1, 100).id]
    assert update.event_count == 2
    [both] = d.take(d.engine.process_many([make_event(2, 1_500), make_event(3, 2_500)]))
    assert len(both.events) == 2 and both.event_count == 4
    assert len(d.latest[formed.id].events) == 4


def test_set_enabled_and_reload(tmp_path: Path) -> None:
    r1, r2 = rule("r1", min_events=1), rule("r2", min_events=1, group_by="device")
    d = Driver([r1, r2], tmp_path, update_interval_seconds=0)
    d.process(make_event(0, 0))
    with pytest.raises(KeyError):
        d.engine.set_enabled("nope", False)
    d.engine.set_enabled("r2", False)
    [closed] = d.tick()
    assert closed.rule.id == "r2" and closed.status == "final"
    assert d.process(make_event(1, 100)) and set(d.engine.stats()) == {"r1", "r2"}
    assert d.engine.stats()["r2"]["events_in_windows"] == 0
    # Renaming keeps the windows; changing the window starts r2 afresh.
    d.engine.reload([r1.model_copy(update={"name": "People"}),
                     RuleConfig(id="r3", window_seconds=5, min_events=1)])
    by_rule = {c.rule.id: c for c in d.process(make_event(2, 200))}
    assert by_rule["r1"].rule.name == "People" and by_rule["r1"].event_count == 3
    assert len(by_rule["r3"].events) == 1
    assert set(d.engine.stats()) == {"r1", "r3"}


def test_reload_of_a_changed_rule_closes_its_composite() -> None:
    d = Driver([rule(min_events=1)], None)
    [formed] = d.process(make_event(0, 0))
    d.engine.reload([rule(min_events=1, window_seconds=99)])
    [closed] = d.tick()
    assert closed.id == formed.id and closed.status == "final"


def test_composites_are_capped() -> None:
    d = Driver([rule(window_seconds=60, min_events=1)], None, max_events_per_composite=3)
    out = d.process(*[make_event(i, i) for i in range(7)])
    finals = [c for c in out if c.status == "final"]
    assert [len(c.events) for c in finals] == [3, 3]
    assert d.process(make_event(1, 1)) == []  # a copy of a member of a closed composite


def test_stats_counts() -> None:
    d = Driver([rule(min_events=2)], None)
    d.process(make_event(0, 0), make_event(1, 1), make_event(2, 2))
    stats = d.engine.stats()["r1"]
    assert stats["formed"] == 1 and stats["updated"] == 1
    assert stats["open_groups"] == 1 and stats["events_in_windows"] == 3


def test_a_copy_counts_once_whatever_its_content() -> None:
    d = Driver([rule(window_seconds=10, min_events=1, group_by="device")], None)
    [formed] = d.process(make_event(0, 0))
    d.at(60_000)
    assert [c.status for c in d.tick()] == ["final"]
    # Same id, a minute later, another label and source: still the event already counted.
    assert d.process(make_event(0, 60_000, label="car", source="mic-1")) == []
    assert d.engine.stats()["r1"]["duplicates"] == 1
    [other] = d.process(make_event(1, 60_000))
    assert other.id != formed.id


def test_counted_ids_are_bounded_by_max_tracked_ids() -> None:
    d = Driver([rule(window_seconds=3600, min_events=1, group_by="device")], None,
               max_tracked_ids=4, max_events_per_composite=10, update_interval_seconds=0)
    for n in range(30):
        d.process(make_event(n, n))
    assert [c.event_count for c in d.finals()] == [10, 10, 10]
    assert len(d.engine._seen) <= 4 + 16
    # The newest ids are remembered; the oldest were forgotten and a copy counts again.
    assert d.process(make_event(29, 29)) == []
    [again] = d.process(make_event(0, 0))
    assert again.event_count == 1


def test_a_group_waiting_for_a_required_label_is_bounded() -> None:
    waits = rule(window_seconds=3600, min_events=2, group_by="device",
                 require_labels=["glass", "person"])
    d = Driver([waits], None, max_events_per_composite=5)
    for n in range(20):
        assert d.process(make_event(n, n * 10)) == []
    assert d.engine.stats()["r1"]["dropped"] == 15
    [formed] = d.process(make_event(20, 300, label="glass", source="mic-1"))
    # The newest candidates and the glass: five, the cap, so it is final at once.
    assert formed.status == "final" and formed.event_count == 5
    assert [e.id for e in formed.events][-1] == make_event(20, 300).id
    assert d.engine.stats()["r1"]["dropped"] == 16


def test_track_memory_is_released_without_ticks_or_a_state_dir() -> None:
    # A dry run never ticks: feeding events alone must let expired tracks go.
    d = Driver([rule(window_seconds=10, min_events=1)], None, track_ttl_seconds=30,
               max_tracks=1_000_000)
    for n in range(2_000):
        d.process(make_event(n, n * 1_000, track_id=f"t{n}", phase="new"))
    tracks = d.engine._rules["r1"].tracks
    # Remembered for 30 s after each track's event, collected every minute of engine time.
    assert len(tracks) <= 30 + 60


def test_tracks_are_bounded_by_max_tracks() -> None:
    d = Driver([rule(window_seconds=3600, min_events=1)], None, max_tracks=20)
    for n in range(200):
        d.process(make_event(n, n, track_id=f"t{n}", phase="new"))
    assert len(d.engine._rules["r1"].tracks) <= 20 + 16
    # The most recent tracks are remembered: a later phase of one is a repeat.
    d.process(make_event(1_000, 300, track_id="t199", phase="update"))
    assert d.engine.stats()["r1"]["repeats"] == 1


def test_a_rules_own_max_events_caps_its_composites_and_not_the_others() -> None:
    small = rule("small", window_seconds=60, min_events=1, max_events=2)
    large = rule("large", window_seconds=60, min_events=1)  # the engine's cap: 4
    d = Driver([small, large], None, max_events_per_composite=4)
    d.process(*[make_event(i, i) for i in range(8)])
    sizes = {rule_id: [c.event_count for c in d.finals() if c.rule.id == rule_id]
             for rule_id in ("small", "large")}
    assert sizes == {"small": [2, 2, 2, 2], "large": [4, 4]}, sizes
    # A bound of this agent, not part of what the rule means: composites do not carry it.
    assert all("max_events" not in c.rule.model_dump() for c in d.emitted)


def test_max_events_survives_a_restart(tmp_path: Path) -> None:
    d = Driver([rule(window_seconds=60, min_events=1, max_events=3)], tmp_path)
    d.process(make_event(0, 0), make_event(1, 1))
    d.restart()
    d.process(make_event(2, 2), make_event(3, 3))
    [final] = d.finals()
    assert [e.id for e in final.events] == [make_event(i, i).id for i in range(3)]
