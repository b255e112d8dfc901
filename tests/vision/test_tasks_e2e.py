"""Classification, segmentation and pose through the running agent and a real broker.

Constant-output models (``tests.inference.task_graphs``) with known masks and keypoints run
on folders of frames of several sizes and aspect ratios; the events that reach the broker
must carry the known outlines (within 2 px) and keypoints (within 1 px) in each frame's own
pixels, follow the object lifecycle, fill zones by outline and by keypoint, classify per
frame, per object and on request, feed a composite rule, and validate against the committed
JSON Schema.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker
from tests.inference import task_graphs as g

jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[2]
BASE = "edge-agent/test-edge"
FRAMES = 8
SIZES = {"seg-a": (640, 480), "seg-b": (1280, 720), "seg-c": (480, 640),
         "pose-a": (640, 480), "pose-b": (1280, 720), "cls": (640, 480), "two": (800, 600),
         "req": (640, 480)}


def _folder(root: Path, name: str, size: tuple[int, int]) -> str:
    folder = root / "frames" / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(FRAMES):
        image = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), image)
    return str(folder)


def _camera(root: Path, name: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"id": name, "url": _folder(root, name, SIZES[name]), "realtime": False, "fps": 10,
            "model": model, "motion": {"enabled": False},
            "tracking": {"update_interval_s": 0.0}, **extra}


@pytest.fixture
def models(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copytree(REPO / "models" / "labels", folder / "labels")
    (folder / "seg.txt").write_text("\n".join(g.SEG_LABELS))
    (folder / "cls.txt").write_text("\n".join(g.CLS_LABELS))
    g.segment_model(folder / "seg.onnx")
    g.pose_model(folder / "pose.onnx")
    g.classifier_model(folder / "cls.onnx")
    return folder


def _schema_problems(events: list[dict[str, Any]]) -> list[str]:
    schema = json.loads((REPO / "agent" / "schemas" / "event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{e['source']['id']} {e['kind']}: {err.message}"
            for e in events for err in validator.iter_errors(e)]


def _image(event: dict[str, Any], role: str) -> np.ndarray:
    media = next(m for m in event["images"] if m["role"] == role)
    data = np.frombuffer(base64.b64decode(media["data"]), np.uint8)
    return np.asarray(cv2.imdecode(data, cv2.IMREAD_COLOR))


def test_every_kind_of_prediction_through_the_agent(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess], models: Path
) -> None:
    cameras = [
        _camera(tmp_path, "seg-a", "seg", objects={"track": ["person", "bottle"]}, zones={
            # Over B's top edge, far from its box's bottom-centre: only its outline is in.
            "top": {"coordinates": [[0.55, 0.2], [0.75, 0.2], [0.75, 0.4], [0.55, 0.4]],
                    "anchor": "outline"},
            "top_by_box": {"coordinates": [[0.55, 0.2], [0.75, 0.2], [0.75, 0.4], [0.55, 0.4]]},
        }),
        _camera(tmp_path, "seg-b", "seg", objects={"track": ["person", "bottle"]}),
        _camera(tmp_path, "seg-c", "seg", objects={"track": ["person", "bottle"]}),
        # Around the left ankle only; the box's bottom-centre is elsewhere.
        _camera(tmp_path, "pose-a", "pose", zones={"ankle": {
            "coordinates": [[0.62, 0.70], [0.72, 0.70], [0.72, 0.78], [0.62, 0.78]],
            "anchor": "left_ankle"}}),
        _camera(tmp_path, "pose-b", "pose"),
        _camera(tmp_path, "cls", "cls",
                classify={"crop": [0.25, 0.5, 0.75, 1.0], "hold_frames": 2, "top_k": 3}),
        _camera(tmp_path, "two", "seg", objects={"track": ["person", "bottle"]},
                classify={"model": "cls", "run": "objects", "objects": ["bottle"],
                          "padding": 0.1}),
        {**_camera(tmp_path, "req", "pose", classify={"model": "cls", "run": "request"}),
         "loop": True, "realtime": True, "fps": 2},
    ]
    rule = {"id": "scratches", "name": "Scratches", "window_seconds": 30, "min_events": 2,
            "group_by": "label_id", "include_label_ids": ["scratched"]}
    config = base_config(tmp_path, broker.port, cameras=cameras, rules=[rule], models={
        "dir": str(models),
        "detectors": {"seg": {"path": "seg.onnx", "labels": "seg.txt"},
                      "pose": {"path": "pose.onnx"},
                      "cls": {"path": "cls.onnx", "labels": "cls.txt",
                              "input_size": [64, 64]}}})
    rec = recorder(f"{BASE}/#")
    agent = AgentProcess(tmp_path, config).start()
    agents.append(agent)
    assert agent.wait_log("mqtt: connected", 30), agent.log

    def ends(ms: list[Any]) -> bool:
        evs = events_of(ms)
        done = {e["source"]["id"] for e in evs if e.get("phase") == "end"}
        return {"seg-a", "seg-b", "seg-c", "pose-a", "pose-b", "two"} <= done and any(
            e["source"]["id"] == "cls" for e in evs)

    assert rec.wait_for(ends, 90), agent.log[-3000:]
    assert agent.wait_log("camera req: running", 30), agent.log

    # On request: the snapshot of a camera with a request classifier is a classification.
    rid = f"req-{random.getrandbits(32):x}"
    rec.client.publish(f"{BASE}/set/sources/req/snapshot",
                       json.dumps({"request_id": rid}).encode(), qos=1)

    def answered(ms: list[Any]) -> bool:
        return any(m.topic.endswith("/result/sources/req/snapshot") for m in ms)

    assert rec.wait_for(answered, 20), agent.log[-3000:]
    result = json.loads(next(m.payload for m in rec.messages
                             if m.topic.endswith("/result/sources/req/snapshot")))
    assert result["ok"], result
    snap_id = result["result"]["event_id"]
    assert rec.wait_for(lambda ms: any(e["id"] == snap_id for e in events_of(ms)), 10)
    events = events_of(rec.messages)
    assert not _schema_problems(events), _schema_problems(events)[:5]

    # Segmentation: two objects per camera, new/end, outlines within 2 px in each frame.
    expected_in = g.seg_expected_input()
    for cam in ("seg-a", "seg-b", "seg-c", "two"):
        evs = [e for e in events if e["source"]["id"] == cam and e["kind"] == "object"]
        size = SIZES[cam]
        for k, label in enumerate(g.SEG_LABELS):
            mine = [e for e in evs if e["label"]["id"] == label]
            assert mine[0]["phase"] == "new" and mine[-1]["phase"] == "end", cam
            assert len({e["track_id"] for e in mine}) == 1
            expected = g.to_frame(expected_in[k], size)
            for e in mine:
                pred = e["predictions"][0]
                assert 3 <= len(pred["polygon"]) <= 64
                err = g.outline_error(np.array(pred["polygon"]), expected)
                assert err <= 2.0, (cam, label, err, pred["polygon"], expected.tolist())
                assert pred["mask_area"] == pytest.approx(
                    cv2.contourArea(expected.astype(np.float32)), rel=0.03)
        new_a = next(e for e in evs if e["label"]["id"] == "person" and e["phase"] == "new")
        if cam == "seg-a":
            # The annotated picture draws A's outline (x = 300, its mask's edge) where the
            # input is unchanged and no box edge lies.
            ann, raw = _image(new_a, "annotated"), _image(new_a, "input")
            ys = np.arange(110, 230)
            diff = np.abs(ann[ys, 300].astype(int) - raw[ys, 300].astype(int)).sum(axis=1)
            assert np.median(diff) > 60, diff

    # Zones: B is in "top" by its outline, not by its box's bottom-centre; A in none.
    seg_a = [e for e in events if e["source"]["id"] == "seg-a" and e["kind"] == "object"]
    end_b = next(e for e in seg_a if e["label"]["id"] == "bottle" and e["phase"] == "end")
    assert end_b["object"]["entered_zones"] == ["top"]
    end_a = next(e for e in seg_a if e["label"]["id"] == "person" and e["phase"] == "end")
    assert end_a["object"]["entered_zones"] == []

    # Pose: one person, all 17 keypoints within 1 px; the zone by the left ankle.
    kp_in = g.pose_keypoints_input()
    for cam in ("pose-a", "pose-b"):
        evs = [e for e in events if e["source"]["id"] == cam and e["kind"] == "object"]
        assert evs[0]["phase"] == "new" and evs[-1]["phase"] == "end"
        expected = g.to_frame(kp_in[:, :2], SIZES[cam])
        for e in evs:
            kps = e["predictions"][0]["keypoints"]
            got = np.array([kps[n][:2] for n in g.COCO_KEYPOINTS])
            assert np.abs(got - expected).max() <= 1.0, (cam, got - expected)
            assert [kps[n][2] for n in g.COCO_KEYPOINTS] == pytest.approx(kp_in[:, 2], abs=1e-3)
    # The annotated picture draws the skeleton: a dot on the left hip (sure), none on the
    # right ear (confidence 0.2, under pose.min_confidence).
    pose_new = next(e for e in events if e["source"]["id"] == "pose-a" and e["phase"] == "new")
    ann, raw = _image(pose_new, "annotated"), _image(pose_new, "input")
    hip = g.to_frame(kp_in[11, :2], SIZES["pose-a"])
    ear = g.to_frame(kp_in[4, :2], SIZES["pose-a"])

    def drawn(at: np.ndarray) -> float:
        x, y = (round(float(v)) for v in at)
        patch = (slice(y - 1, y + 2), slice(x - 1, x + 2))
        return float(np.abs(ann[patch].astype(int) - raw[patch].astype(int)).mean())

    assert drawn(hip) > 60 and drawn(ear) < 20, (drawn(hip), drawn(ear))
    pose_end = next(e for e in events if e["source"]["id"] == "pose-a" and e["phase"] == "end")
    assert pose_end["object"]["entered_zones"] == ["ankle"]

    # Per-frame classification: one event once "scratched" held two frames, top 3 ranked,
    # the crop as the region.
    cls = [e for e in events if e["source"]["id"] == "cls"]
    assert len(cls) == 1 and cls[0]["kind"] == "classification"
    assert cls[0]["label"]["id"] == "scratched"
    preds = cls[0]["predictions"]
    assert [p["label"]["id"] for p in preds] == ["scratched", "good", "dented"]
    assert [p["confidence"] for p in preds] == pytest.approx([0.9088, 0.0746, 0.0166], abs=2e-4)
    assert preds[0]["box"] == {"x": 160.0, "y": 240.0, "width": 320.0, "height": 240.0}

    # Two-stage: the bottle (only) is classified, on its own track and box grown by 10 %.
    two = [e for e in events if e["source"]["id"] == "two"]
    classified = [e for e in two if e["kind"] == "classification"]
    bottle = next(e for e in two if e["kind"] == "object" and e["label"]["id"] == "bottle")
    assert len(classified) == 1
    assert classified[0]["track_id"] is None  # no lifecycle: rules count each change
    assert classified[0]["predictions"][0]["track_id"] == bottle["track_id"]
    assert classified[0]["model"]["name"] == "cls"
    box, region = bottle["object"]["box"], classified[0]["predictions"][0]["box"]
    assert region["width"] == pytest.approx(box["width"] * 1.2, abs=0.5)
    assert region["x"] == pytest.approx(box["x"] - box["width"] * 0.1, abs=0.5)

    # On request: a classification of the whole frame.
    snap = next(e for e in events if e["id"] == snap_id)
    assert snap["kind"] == "classification" and snap["label"]["id"] == "scratched"
    assert {m["role"] for m in snap["images"]} == {"input", "annotated"}

    # A composite rule over classification events, unchanged: cls + two (+ request).
    def composed(ms: list[Any]) -> bool:
        return any("/composite/scratches" in m.topic for m in ms)

    assert rec.wait_for(composed, 20), agent.log[-2000:]
    composites = [json.loads(m.payload) for m in rec.messages
                  if "/composite/scratches" in m.topic]
    members = [e for c in composites for e in c["events"]]
    assert {e["kind"] for e in members} == {"classification"}
    # The per-frame camera's and the two-stage camera's both count.
    assert {"cls", "two"} <= {e["source"]["id"] for e in members}
