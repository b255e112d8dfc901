"""Filters, masks and zones of the object stage, and the motion gate."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.events.config import (
    LabelFilter,
    ObjectsConfig,
    SnapshotsConfig,
    TrackingConfig,
    ZoneConfig,
)
from agent.events.objects import EventContext, ObjectProcessor, points_in_polygon
from agent.events.schema import DeviceRef, ModelRef, SourceRef
from agent.inference.config import MotionConfig
from agent.inference.motion import MotionGate
from tests.vision.test_tracking import EMPTY, FRAME, LABELS, H, W, box_at, dets, phases, run

CTX = EventContext(DeviceRef(id="d"), SourceRef(id="cam", kind="camera", name="Cam"),
                   ModelRef(name="m", sha256="0" * 64), "default")

LEFT_HALF = [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0), (0.0, 1.0)]


def make(**kwargs: object) -> ObjectProcessor:
    kwargs.setdefault("objects", ObjectsConfig(track=["person", "car"]))
    kwargs.setdefault("snapshots", SnapshotsConfig(enabled=False))
    return ObjectProcessor(LABELS, CTX, **kwargs)  # type: ignore[arg-type]


# -- geometry ---------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=3, max_size=8),
    st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=20),
)
def test_points_in_polygon_agrees_with_opencv(
    poly: list[tuple[float, float]], points: list[tuple[float, float]]
) -> None:
    scale = 1000.0
    p = np.asarray(poly, dtype=np.float32)
    pts = np.asarray(points, dtype=np.float32)
    got = points_in_polygon(pts, p)
    contour = (p * scale).reshape(-1, 1, 2)
    for i, (x, y) in enumerate(pts * scale):
        d = cv2.pointPolygonTest(contour, (float(x), float(y)), True)
        if abs(d) > 1e-2:  # on the edge either answer is fine
            assert got[i] == (d > 0)


# -- filters ----------------------------------------------------------------------------------


def test_filters_by_label_score_area_and_ratio() -> None:
    proc = make(objects=ObjectsConfig(
        track=["person", "car"],
        filters={"person": LabelFilter(min_score=0.6, min_area=2000, max_area=0.1,
                                       min_ratio=0.2, max_ratio=1.0)},
    ))
    d = dets(
        (box_at(10, w=60, h=120), 0.9, 0),    # kept: 7200 px, ratio 0.5
        (box_at(100, w=60, h=120), 0.55, 0),  # kept, but too weak to start a track
        (box_at(200, w=20, h=40), 0.9, 0),    # 800 px < min_area
        (box_at(300, w=300, h=300), 0.9, 0),  # 90000 px > 10% of 307200
        (box_at(400, w=120, h=60), 0.9, 0),   # ratio 2 > max_ratio
        (box_at(500, w=60, h=120), 0.9, 1),   # bicycle: not tracked
        (box_at(550, w=90, h=60), 0.3, 2),    # car, default min_score 0.5: weak only
    )
    kept, high = proc.filter(d, W, H)
    assert kept.xyxy[:, 0].tolist() == [10, 100, 550]
    assert high.tolist() == [True, False, False]


def test_unknown_labels_in_the_configuration_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"objects.track: unknown label 'persn'"):
        make(objects=ObjectsConfig(track=["persn"]))
    with pytest.raises(ValueError, match=r"zones.door.objects: unknown label 'cat'"):
        make(zones={"door": ZoneConfig(coordinates=LEFT_HALF, objects=["cat"])})


def test_a_detection_standing_in_a_mask_is_dropped() -> None:
    # Mask the bottom-right quarter; only where an object touches the ground counts.
    mask = [(0.5, 0.5), (1.0, 0.5), (1.0, 1.0), (0.5, 1.0)]
    proc = make(masks=[mask])
    in_mask = box_at(400, y=300)           # bottom-centre (440, 460): masked
    mostly_in_mask = [130, 300, 470, 460]  # bottom-centre (300, 460): just left of it
    outside = box_at(100, y=300)
    kept, _ = proc.filter(dets((in_mask, 0.9, 0), (mostly_in_mask, 0.9, 0), (outside, 0.9, 0)),
                          W, H)
    assert kept.xyxy[:, 0].tolist() == [130, 100]
    assert run(proc, [dets((in_mask, 0.9, 0))] * 20) == []


# -- zones ------------------------------------------------------------------------------------


def test_zones_entered_and_left_with_inertia() -> None:
    proc = make(
        zones={"left": ZoneConfig(coordinates=LEFT_HALF, inertia=3)},
        tracking=TrackingConfig(update_interval_s=0.0),
    )
    # Walks right to left across the middle, then stands still on the left.
    frames = [dets((box_at(500 - i * 20), 0.9, 0)) for i in range(25)]
    frames += [dets((box_at(20), 0.9, 0))] * 5 + [EMPTY] * 30
    events = run(proc, frames)
    assert phases(events)[0] == "new" and phases(events)[-1] == "end"
    new = events[0]
    assert new.object is not None and new.object.current_zones == []
    entered = next(e for e in events if e.object and e.object.current_zones == ["left"])
    assert entered.phase == "update" and entered.object and entered.object.entered_zones == ["left"]
    # The bottom-centre crosses x = 320 at frame 9 (x = 320 - 40 + ...); inertia 3 later.
    t_entered = entered.timestamp.timestamp() - 1_700_000_000.0
    assert t_entered == pytest.approx(0.2 * 14, abs=0.21)
    assert events[-1].object and events[-1].object.entered_zones == ["left"]


def test_zone_limited_to_some_labels() -> None:
    proc = make(zones={"road": ZoneConfig(coordinates=LEFT_HALF, objects=["car"], inertia=1)},
                tracking=TrackingConfig(update_interval_s=0.0))
    frames = [dets((box_at(50, y=100), 0.9, 0), (box_at(150, y=300), 0.9, 2))] * 5
    events = run(proc, frames)
    zones = {e.label.id: e.object.current_zones for e in events if e.label and e.object}
    assert zones == {"person": [], "car": ["road"]}


# -- motion gate ------------------------------------------------------------------------------


def _scene(rng: np.random.Generator, square_x: int | None = None) -> np.ndarray:
    base = np.full((H, W, 3), 110, dtype=np.uint8)
    cv2.rectangle(base, (100, 300), (600, 420), (60, 70, 80), -1)
    noise = rng.integers(-4, 5, size=base.shape, dtype=np.int16)
    frame = np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    if square_x is not None:
        cv2.rectangle(frame, (square_x, 150), (square_x + 40, 230), (20, 200, 240), -1)
    return frame


def test_motion_gate_sees_movement_not_noise() -> None:
    rng = np.random.default_rng(0)
    gate = MotionGate(MotionConfig())
    assert gate.update(_scene(rng)).motion  # no background yet: look once
    assert not any(gate.update(_scene(rng)).motion for _ in range(30))
    moving = [gate.update(_scene(rng, 50 + 15 * i)).motion for i in range(10)]
    assert all(moving)
    gate.reset()
    assert gate.update(_scene(rng)).motion


def test_motion_in_a_mask_is_ignored() -> None:
    rng = np.random.default_rng(1)
    gate = MotionGate(MotionConfig(), masks=[[(0.0, 0.2), (1.0, 0.2), (1.0, 0.55), (0.0, 0.55)]])
    gate.update(_scene(rng))
    assert not any(gate.update(_scene(rng, 50 + 15 * i)).motion for i in range(10))


def test_a_lighting_change_is_absorbed_at_once() -> None:
    rng = np.random.default_rng(2)
    gate = MotionGate(MotionConfig())
    gate.update(_scene(rng))
    gate.update(_scene(rng))
    bright = [np.clip(_scene(rng).astype(np.int16) + 80, 0, 255).astype(np.uint8)
              for _ in range(3)]
    results = [gate.update(f) for f in bright]
    assert results[0].motion and results[0].fraction > 0.6
    assert not results[1].motion and not results[2].motion


def test_frames_are_gated_only_when_the_scene_is_still() -> None:
    # Sanity check against FRAME being black: the gate runs on any image size.
    gate = MotionGate(MotionConfig(width=80))
    gate.update(FRAME)
    assert not gate.update(FRAME).motion
