"""The sound lifecycle and clips, on synthetic windows (no model): new/update/end rules."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events.config import UpdateConfig
from agent.events.schema import DeviceRef, Label, LabelName
from agent.events.sounds import (
    ClipRecorder,
    LabelRule,
    SoundEventBuilder,
    SoundLifecycle,
    Window,
    rms_dbfs,
)
from agent.sources.config import MicrophoneConfig

HOP = 0.48
WIN = 0.975
LABELS = [Label(id=f"l{i}", name=LabelName(en=f"L{i}", ko=f"엘{i}")) for i in range(3)]


def rule(index: int = 0, threshold: float = 0.5, min_volume: float = -70.0,
         needs_vad: bool = False) -> LabelRule:
    return LabelRule(LABELS[index], index, threshold, min_volume, needs_vad)


def window(k: int, conf: float | None, dbfs: float = -20.0, vad: float | None = None,
           t0: float = 1000.0) -> Window:
    end = t0 + WIN + k * HOP
    scores = None if conf is None else np.array([conf, 0.1, 0.0], np.float32)
    return Window(end - WIN, end, dbfs, scores, vad)


def run(lc: SoundLifecycle, confs: list[float | None], **kw: object) -> list[tuple[str, str]]:
    out = []
    for k, c in enumerate(confs):
        out += [(t.phase, t.occurrence.track_id) for t in lc.step(window(k, c, **kw))]  # type: ignore[arg-type]
    return out


def test_one_occurrence_is_new_then_end() -> None:
    lc = SoundLifecycle([rule()], max_not_heard=2.0, updates=UpdateConfig(enabled=False))
    steps = run(lc, [0.1, 0.9, 0.2, 0.8, 0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert [p for p, _ in steps] == ["new", "end"]
    assert steps[0][1] == steps[1][1]
    assert not lc.open


def test_end_waits_max_not_heard_from_the_last_heard_window() -> None:
    lc = SoundLifecycle([rule()], max_not_heard=2.0, updates=UpdateConfig(enabled=False))
    transitions = []
    for k, c in enumerate([0.9, 0.9] + [0.0] * 8):
        for t in lc.step(window(k, c)):
            transitions.append((k, t))
    (k_new, new), (k_end, end) = transitions
    assert (k_new, new.phase, k_end, end.phase) == (0, "new", 6, "end")  # 1 + ceil(2.0 / 0.48)
    occ = end.occurrence
    assert occ.started_at == window(0, 0).centre
    assert occ.ended_at == window(1, 0).centre
    assert end.at - occ.last_heard_end >= 2.0


def test_updates_are_rate_limited_and_need_a_notable_rise() -> None:
    lc = SoundLifecycle([rule()], max_not_heard=2.0,
                        updates=UpdateConfig(min_interval_s=1.0, min_confidence_rise=0.1))
    # Rising every window, but at most one update per second of audio.
    phases = [p for p, _ in run(lc, [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.96, 0.97])]
    assert phases[0] == "new"
    assert 1 <= phases.count("update") <= 3
    lc2 = SoundLifecycle([rule()], max_not_heard=2.0,
                         updates=UpdateConfig(min_interval_s=0.0, min_confidence_rise=0.1))
    # Flat confidence and level: nothing worth an update.
    assert [p for p, _ in run(lc2, [0.7] * 10)] == ["new"]


def test_per_label_thresholds_levels_and_gated_windows() -> None:
    lc = SoundLifecycle([rule(threshold=0.8, min_volume=-30.0)], max_not_heard=2.0)
    assert run(lc, [0.7, 0.79]) == []  # below the label's confidence threshold
    assert run(lc, [0.95], dbfs=-40.0) == []  # loud enough to classify, too quiet for it
    assert run(lc, [None]) == []  # gated: never heard
    assert [p for p, _ in run(lc, [0.95], dbfs=-20.0)] == ["new"]


def test_vad_must_agree_for_speech_labels() -> None:
    lc = SoundLifecycle([rule(needs_vad=True)], max_not_heard=2.0, vad_threshold=0.5)
    assert run(lc, [0.9], vad=0.2) == []
    assert run(lc, [0.9], vad=None) == []
    assert [p for p, _ in run(lc, [0.9], vad=0.7)] == ["new"]


def test_flush_ends_open_sounds() -> None:
    lc = SoundLifecycle([rule(0), rule(1, threshold=0.05)], max_not_heard=5.0)
    assert len(run(lc, [0.9, 0.9])) == 2
    ends = lc.flush(2000.0)
    assert sorted(t.occurrence.rule.label.id for t in ends) == ["l0", "l1"]
    assert all(t.phase == "end" for t in ends) and not lc.open


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=60),
       st.floats(0.3, 5.0))
def test_lifecycle_agrees_with_a_brute_force_reference(
    confs: list[float | None], max_not_heard: float
) -> None:
    lc = SoundLifecycle([rule()], max_not_heard=max_not_heard,
                        updates=UpdateConfig(min_interval_s=0.5))
    steps = [t for k, c in enumerate(confs) for t in lc.step(window(k, c))]
    steps += lc.flush(window(len(confs), None).end)
    # Reference: an occurrence ends at the first unheard window max_not_heard after the last
    # heard one; a heard window with none open starts the next.
    expected = 0
    last: float | None = None
    for k, c in enumerate(confs):
        t = window(k, c).end
        if c is not None and c >= 0.5:
            expected += last is None
            last = t
        elif last is not None and t - last >= max_not_heard:
            last = None
    by_track: dict[str, list[str]] = {}
    for s in steps:
        by_track.setdefault(s.occurrence.track_id, []).append(s.phase)
    assert len(by_track) == expected
    for phases in by_track.values():
        assert phases[0] == "new" and phases[-1] == "end"
        assert phases.count("new") == 1 and phases.count("end") == 1
    for s in steps:
        occ = s.occurrence
        assert occ.ended_at is None or occ.ended_at >= occ.started_at


def test_levels() -> None:
    assert rms_dbfs(np.zeros(100, np.float32)) == (0.0, -120.0)
    rms, db = rms_dbfs(np.ones(100, np.float32))
    assert (rms, db) == (1.0, 0.0)
    t = np.arange(16000) / 16000
    _, db = rms_dbfs((0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert abs(db - (-9.03)) < 0.01  # a sine at half scale: 20 log10(0.5 / sqrt 2)


def test_clip_has_pre_roll_and_is_bounded() -> None:
    rate = 1000
    rec = ClipRecorder(rate, pre_roll_s=1.0, window_s=1.0, max_seconds=3.0)
    t = 100.0
    for _ in range(30):  # 3 s of audio in 0.1 s chunks: a ramp, so positions are checkable
        start = rec.total
        rec.feed(np.arange(start, start + 100, dtype=np.float32), t + 0.1)
        t += 0.1
    rec.start("a", from_time=102.0)  # pre-roll reaches back to 101.0
    media = rec.media("a")
    assert media is not None and abs(media.duration_s - 2.0) < 0.01  # type: ignore[operator]
    for _ in range(50):
        start = rec.total
        rec.feed(np.arange(start, start + 100, dtype=np.float32), t + 0.1)
        t += 0.1
    final = rec.finish("a")
    assert final is not None and final.duration_s == 3.0  # bounded by max_seconds
    assert rec.media("a") is None
    assert np.array_equal(rec.recent(5), np.arange(rec.total - 5, rec.total, dtype=np.float32))


def test_event_carries_levels_thresholds_names_and_microphone() -> None:
    cfg = MicrophoneConfig(id="hall", name="Hallway", location="1F", file="x.wav",
                           use_case="safety", metadata={"zone": "A"})
    builder = SoundEventBuilder(cfg, DeviceRef(id="edge-01"), None, LABELS)
    lc = SoundLifecycle([rule(threshold=0.6, min_volume=-50.0)], max_not_heard=1.0)
    (new,) = lc.step(window(0, 0.9))
    event = builder.build(new, None)
    assert (event.kind, event.phase, event.label) == ("sound", "new", LABELS[0])
    assert event.sound is not None
    assert (event.sound.confidence_threshold, event.sound.sound_level_threshold) == (0.6, -50.0)
    assert event.sound.sound_level == -20.0
    assert event.source.model_dump() == {"id": "hall", "kind": "microphone", "name": "Hallway",
                                         "location": "1F", "status": "active"}
    assert (event.use_case, event.metadata) == ("safety", {"zone": "A"})
    assert [p.label.id for p in event.predictions] == ["l0", "l1", "l2"]
    assert event.predictions[0].confidence >= event.predictions[1].confidence
