"""The tracker and the object lifecycle on synthetic detections (no model, no camera)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agent.events.config import ObjectsConfig, SnapshotsConfig, TrackingConfig
from agent.events.objects import EventContext, ObjectProcessor
from agent.events.schema import DeviceRef, Event, Label, LabelName, SourceRef
from agent.events.tracking import Tracker, box_ios, box_iou, greedy_match
from agent.inference.detections import Detections

LABELS = [Label(id=n, name=LabelName(en=n, ko=k))
          for n, k in [("person", "사람"), ("bicycle", "자전거"), ("car", "자동차")]]
W, H = 640, 480
FRAME = np.zeros((H, W, 3), dtype=np.uint8)
DT = 0.2  # 5 fps


def dets(*items: tuple[Sequence[float], float, int]) -> Detections:
    """Detections from (xyxy, score, class) tuples."""
    if not items:
        return Detections.empty()
    return Detections(
        np.array([b for b, _, _ in items], dtype=np.float32).reshape(-1, 4),
        np.array([s for _, s, _ in items], dtype=np.float32),
        np.array([c for _, _, c in items], dtype=np.int64),
    )


def box_at(x: float, y: float = 200, w: float = 80, h: float = 160) -> list[float]:
    return [x, y, x + w, y + h]


def processor(snapshots: bool = False, **tracking: object) -> ObjectProcessor:
    ctx = EventContext(DeviceRef(id="d"), SourceRef(id="cam", kind="camera", name="Cam"),
                       None, "default", {"line": "L1"})
    return ObjectProcessor(
        LABELS, ctx, objects=ObjectsConfig(track=["person", "car"]),
        tracking=TrackingConfig(**tracking),  # type: ignore[arg-type]
        snapshots=SnapshotsConfig(enabled=snapshots),
    )


def run(proc: ObjectProcessor, frames: Sequence[Detections], t0: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for i, d in enumerate(frames):
        t = t0 + i * DT
        events += proc.process(d, FRAME, t, 1_700_000_000.0 + t)
    return events


def phases(events: Sequence[Event]) -> list[str]:
    return [str(e.phase) for e in events]


def crossing(steps: int = 50, speed: float = 12.0, score: float = 0.85, cls: int = 0,
             y: float = 200) -> list[Detections]:
    return [dets((box_at(i * speed, y), score, cls)) for i in range(steps)]


EMPTY = Detections.empty()


# -- the lifecycle ----------------------------------------------------------------------------


def test_one_object_crossing_is_one_new_then_one_end() -> None:
    events = run(processor(), crossing() + [EMPTY] * 30)
    assert phases(events)[0] == "new" and phases(events)[-1] == "end"
    assert phases(events).count("new") == 1 and phases(events).count("end") == 1
    assert phases(events).count("update") <= 2
    assert len({e.track_id for e in events}) == 1
    new, end = events[0], events[-1]
    assert new.kind == "object" and new.label is not None and new.label.name.ko == "사람"
    assert new.object is not None and new.object.frames == 3  # min_hits
    assert end.ended_at is not None and end.started_at == new.started_at
    assert end.ended_at < end.timestamp  # last seen, then max_disappeared runs later
    assert new.metadata == {"line": "L1"}


def test_end_comes_after_max_disappeared_detector_runs() -> None:
    proc = processor(max_disappeared=10)
    assert phases(run(proc, crossing(10) + [EMPTY] * 10)) == ["new"]
    assert phases(run(proc, [EMPTY], t0=100)) == ["end"]


def test_two_objects_are_two_tracks() -> None:
    a = crossing(40, speed=10, cls=0, y=40)
    b = [dets((box_at(W - 100 - i * 10, 280), 0.9, 2)) for i in range(40)]
    both = [dets(*[(x.xyxy[0], float(x.confidence[0]), int(x.class_id[0])) for x in pair])
            for pair in zip(a, b, strict=True)]
    events = run(processor(), both + [EMPTY] * 30)
    assert phases(events).count("new") == 2 and phases(events).count("end") == 2
    by_track = {e.track_id: e.label.id for e in events if e.label}
    assert sorted(by_track.values()) == ["car", "person"]


def test_same_class_objects_passing_each_other_keep_their_ids() -> None:
    frames = []
    for i in range(40):
        left = box_at(20 + i * 12, 200)
        right = box_at(W - 100 - i * 12, 230)
        frames.append(dets((left, 0.9, 0), (right, 0.8, 0)))
    proc = processor()
    events = run(proc, frames + [EMPTY] * 30)
    assert phases(events).count("new") == 2 and phases(events).count("end") == 2
    # Velocity prediction carries each through the overlap: the left one ends on the right.
    ends = {e.track_id: e.object.box.x for e in events if e.phase == "end" and e.object}
    starts = {e.track_id: e.object.box.x for e in events if e.phase == "new" and e.object}
    assert all((ends[t] > W / 2) == (starts[t] < W / 2) for t in ends)


def test_flicker_shorter_than_max_disappeared_keeps_the_track() -> None:
    frames = crossing(40)
    for i in (12, 13, 14, 15, 16, 25, 27):
        frames[i] = EMPTY
    events = run(processor(), frames + [EMPTY] * 30)
    assert phases(events).count("new") == 1 and phases(events).count("end") == 1


def test_gap_longer_than_max_disappeared_is_a_new_object() -> None:
    frames = crossing(10, speed=0) + [EMPTY] * 12 + crossing(10, speed=0)
    events = run(processor(max_disappeared=10), frames + [EMPTY] * 12)
    assert phases(events) == ["new", "end", "new", "end"]


def test_weak_detections_keep_a_track_alive_but_never_start_one() -> None:
    # ByteTrack's second stage: 0.3 is below min_score (0.5) but above low_score (0.1).
    frames = crossing(10, score=0.9) + crossing(20, score=0.3)[10:] + [EMPTY] * 30
    events = run(processor(max_disappeared=5), frames)
    assert phases(events).count("new") == 1 and phases(events).count("end") == 1
    assert run(processor(), crossing(20, score=0.3)) == []


def test_a_parked_car_is_one_new_and_then_silence() -> None:
    parked = [dets((box_at(300, 250, 160, 90), 0.8 + 0.02 * ((i * 7) % 5), 2))
              for i in range(300)]
    proc = processor(update_interval_s=1.0)
    events = run(proc, parked)
    assert phases(events)[0] == "new"
    updates = [e for e in events if e.phase == "update"]
    # At most: a better snapshot, and the one that says it became stationary.
    assert len(updates) <= 2
    assert any(e.object and e.object.stationary for e in updates)
    assert proc.active_tracks == 1 and not proc.busy
    # Jittering a pixel or two does not make it move again.
    jitter = [dets((np.add(box_at(300, 250, 160, 90), [1, -1, 1, 0]), 0.82, 2))] * 50
    assert run(proc, jitter, t0=100) == []


def test_a_single_lucky_frame_does_not_confirm() -> None:
    frames = [dets((box_at(100), s, 0)) for s in (0.95, 0.55, 0.5, 0.55, 0.6, 0.5, 0.52)]
    assert run(processor(), frames + [EMPTY] * 40) == []


def test_updates_are_rate_limited_and_only_for_better_snapshots() -> None:
    scores = np.linspace(0.72, 0.99, 30)
    frames = [dets((box_at(100 + i), float(s), 0)) for i, s in enumerate(scores)]
    events = run(processor(snapshots=True, update_interval_s=2.0), frames)
    times = [e.timestamp.timestamp() for e in events]
    assert all(b - a >= 2.0 - 1e-3 for a, b in itertools.pairwise(times))
    updates = [e for e in events if e.phase == "update"]
    assert updates and all(len(e.images) == 2 for e in updates)
    best = [e.predictions[0].confidence for e in events]
    assert best == sorted(best)


def test_images_on_new_are_decodable_jpegs_with_boxes_drawn() -> None:
    import base64

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(H, W, 3), dtype=np.uint8)
    proc = processor(snapshots=True)
    events: list[Event] = []
    for i in range(3):
        events += proc.process(dets((box_at(100 + i), 0.9, 0)), frame, i * DT, 1e9 + i * DT)
    (new,) = events
    roles = [m.role for m in new.images]
    assert roles == ["input", "annotated"]
    decoded = [cv2.imdecode(np.frombuffer(base64.b64decode(m.data or ""), np.uint8),
                            cv2.IMREAD_COLOR) for m in new.images]
    assert all(d is not None and d.shape == (H, W, 3) for d in decoded)
    assert new.images[0].sha256 != new.images[1].sha256
    assert new.predictions[0].track_id == new.track_id
    assert new.predictions[0].box is not None and new.predictions[0].box.width == 80


def test_end_may_carry_the_best_snapshot() -> None:
    ctx = EventContext(DeviceRef(id="d"), SourceRef(id="c", kind="camera", name="c"), None,
                       "default")
    proc = ObjectProcessor(LABELS, ctx, snapshots=SnapshotsConfig(on_end=True, annotated=False))
    events = run(proc, crossing(5, speed=0) + [EMPTY] * 30)
    assert phases(events) == ["new", "end"]
    assert events[1].images == events[0].images


def test_finish_ends_every_confirmed_object() -> None:
    proc = processor()
    run(proc, crossing(5))
    run(proc, [dets((box_at(500), 0.9, 0))])  # a tentative second object: no end for it
    assert phases(proc.finish(2e9)) == ["end"]
    assert proc.tracker.tracks == [] and proc.active_tracks == 0


# -- the vectorised pieces --------------------------------------------------------------------


def _boxes(n: int) -> st.SearchStrategy[np.ndarray]:
    # Corners anywhere, sides of at least a pixel (what a detector reports).
    corner = arrays(np.float32, (n, 2), elements=st.floats(0, 500, width=32))
    size = arrays(np.float32, (n, 2), elements=st.floats(1, 300, width=32))
    return st.tuples(corner, size).map(lambda cs: np.concatenate([cs[0], cs[0] + cs[1]], axis=1))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 6).flatmap(_boxes), st.integers(0, 6).flatmap(_boxes))
def test_box_iou_agrees_with_a_brute_force_reference(a: np.ndarray, b: np.ndarray) -> None:
    got = box_iou(a, b)
    assert got.shape == (len(a), len(b))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            want = inter / union if union > 0 else 0.0
            assert got[i, j] == pytest.approx(want, abs=1e-4)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(0, 6)),
              elements=st.floats(0, 1, width=32)), st.floats(0.05, 0.95))
def test_greedy_match_pairs_each_side_once_above_threshold(iou: np.ndarray, thr: float) -> None:
    rows, cols = greedy_match(iou, thr)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)
    assert all(iou[r, c] >= thr for r, c in zip(rows, cols, strict=True))
    # Maximal: no pair above the threshold is left with both sides free.
    free_r = set(range(iou.shape[0])) - set(rows.tolist())
    free_c = set(range(iou.shape[1])) - set(cols.tolist())
    assert not any(iou[r, c] >= thr for r in free_r for c in free_c)


def test_tracker_matches_by_class() -> None:
    tracker = Tracker(TrackingConfig())
    tracker.update(dets((box_at(100), 0.9, 0)), 0.0)
    step = tracker.update(dets((box_at(101), 0.9, 2)), 0.2)
    assert len(step.born) == 1 and len(tracker.tracks) == 2


# -- one object, one story: real model output of a person walking out of the frame ------------

WALKOUT = Path(__file__).parent / "fixtures" / "walkout.json"


def walkout_frames() -> list[Detections]:
    """The recorded YOLOv3-tiny detections (tests/vision/record_walkout.py), as Detections."""
    recorded = json.loads(WALKOUT.read_text(encoding="utf-8"))
    ids = {label.id: i for i, label in enumerate(LABELS)}
    return [dets(*[(d["xyxy"], d["score"], ids[d["label"]]) for d in frame["detections"]
                   if d["label"] in ids])
            for frame in recorded["frames"]]


def test_a_person_walking_out_of_the_frame_is_one_new_and_one_end() -> None:
    frames = walkout_frames()
    # The recording really holds the trap: a confident second person box inside the first.
    doubled = [d for d in frames if len(d) == 2 and float(d.confidence.min()) >= 0.5]
    assert len(doubled) >= 3
    for d in doubled:
        assert float(box_iou(d.xyxy[:1], d.xyxy[1:])[0, 0]) < 0.45  # NMS keeps both
        assert float(box_ios(d.xyxy[:1], d.xyxy[1:])[0, 0]) >= 0.95

    for threshold in (0.7, 0.6, 0.5):
        events = run(walkout_processor(threshold), frames)
        assert phases(events).count("new") == 1, (threshold, phases(events))
        assert phases(events).count("end") == 1, (threshold, phases(events))
        assert len({e.track_id for e in events}) == 1


def walkout_processor(threshold: float, **tracking: object) -> ObjectProcessor:
    ctx = EventContext(DeviceRef(id="d"), SourceRef(id="cam", kind="camera", name="Cam"),
                       None, "default", {})
    return ObjectProcessor(
        LABELS, ctx,
        objects=ObjectsConfig(track=["person"],
                              filters={"person": {"threshold": threshold}}),  # type: ignore[dict-item]
        tracking=TrackingConfig(max_disappeared=5, **tracking),  # type: ignore[arg-type]
        snapshots=SnapshotsConfig(enabled=False),
    )


def test_without_joining_contained_boxes_the_walkout_is_told_twice() -> None:
    # What contained_threshold prevents: with a person threshold of 0.6 the inner box is
    # confirmed as a second person.
    events = run(walkout_processor(0.6, contained_threshold=None), walkout_frames())
    assert phases(events).count("new") == 2, phases(events)


def test_two_people_side_by_side_stay_two() -> None:
    # Touching boxes overlap a little, far below contained_threshold: two objects.
    frames = [dets((box_at(100 + 4 * i), 0.9, 0), (box_at(170 + 4 * i), 0.9, 0))
              for i in range(10)]
    events = run(processor(), frames)
    assert phases(events).count("new") == 2


def test_box_ios_is_one_for_a_box_inside_another() -> None:
    outer = np.array([[0, 0, 100, 100]], np.float32)
    inner = np.array([[10, 10, 30, 90]], np.float32)
    assert float(box_ios(outer, inner)[0, 0]) == pytest.approx(1.0)
    assert float(box_ios(outer, np.array([[50, 0, 150, 100]], np.float32))[0, 0]) == \
        pytest.approx(0.5)
