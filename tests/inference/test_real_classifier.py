"""A real classifier: PaddleOCR's text direction model from the rapidocr-onnxruntime wheel.

Fetched once into ``models/`` the way ``edge-agent models fetch text-direction`` does
(pip download of the pinned wheel, the ONNX file read out of it). Rendered text must read as
upright, the same picture turned round as upside down; through the running agent, a camera
whose frames turn round sends one classification event per direction.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from agent.inference.classify import Classifier
from agent.inference.config import DetectorModelConfig
from agent.inference.loader import load_vision_model
from agent.inference.task_fetch import TEXT_DIRECTION
from scripts.harness.agent_process import AgentProcess, base_config, events_of
from scripts.harness.broker import Broker

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


@pytest.fixture(scope="module")
def text_direction() -> Classifier:
    from agent.inference.fetch import fetch_models

    fetch_models(MODELS, ["text-direction"], quiet=True)
    model = load_vision_model("text-direction", DetectorModelConfig.model_validate(
        TEXT_DIRECTION), MODELS)
    assert isinstance(model, Classifier)
    return model


def text_image(text: str, width: int = 320, height: int = 64) -> np.ndarray:
    image = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(image, text, (8, height - 18), cv2.FONT_HERSHEY_SIMPLEX, 1.0, (0, 0, 0), 2,
                cv2.LINE_AA)
    return image


@pytest.mark.parametrize("text", ["Edge agent 2026", "INVOICE No. 4471", "lot 7 / line B"])
def test_rendered_text_reads_upright_and_turned(text_direction: Classifier, text: str) -> None:
    assert text_direction.labels == ["upright", "upside down"]
    image = text_image(text)
    upright = text_direction.classify(image)
    turned = text_direction.classify(np.ascontiguousarray(image[::-1, ::-1]))
    assert upright.best[0] == 0 and upright.best[1] > 0.9, upright.top(2)
    assert turned.best[0] == 1 and turned.best[1] > 0.9, turned.top(2)


def test_a_camera_reading_labels_reports_when_they_turn(
    tmp_path: Path, broker: Broker, recorder: Any, agents: list[AgentProcess],
    text_direction: Classifier,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(MODELS / "labels", models / "labels")
    shutil.copytree(MODELS / "text-direction", models / "text-direction")
    frames = tmp_path / "frames"
    frames.mkdir()
    # A 640x360 scene with a label in its middle; the label is turned round halfway.
    for i in range(10):
        scene = np.full((360, 640, 3), 90, np.uint8)
        label = text_image("Edge agent 2026")
        scene[148:212, 160:480] = label if i < 5 else label[::-1, ::-1]
        cv2.imwrite(str(frames / f"{i:03d}.png"), scene)
    camera = {"id": "labeller", "url": str(frames), "realtime": False, "fps": 10,
              "model": "text-direction", "motion": {"enabled": False},
              "classify": {"crop": [0.25, 0.4, 0.75, 0.6], "hold_frames": 3,
                           "min_confidence": 0.9}}
    config = base_config(tmp_path, broker.port, cameras=[camera], models={
        "dir": str(models), "detectors": {"text-direction": TEXT_DIRECTION}})
    rec = recorder("edge-agent/#")
    agent = AgentProcess(tmp_path, config).start()
    agents.append(agent)
    assert agent.wait_log("mqtt: connected", 30), agent.log
    assert rec.wait_for(lambda ms: len(events_of(ms)) >= 2, 60), agent.log[-2000:]
    assert agent.wait_log("camera labeller: ended", 30), agent.log[-2000:]
    events = events_of(rec.messages)
    assert [e["label"]["id"] for e in events] == ["upright", "upside_down"], json.dumps(
        [e["predictions"] for e in events])
    for event in events:
        assert event["kind"] == "classification"
        assert event["model"]["name"] == "text-direction"
        assert event["predictions"][0]["confidence"] > 0.9
        assert event["predictions"][0]["box"] == {"x": 160.0, "y": 144.0, "width": 320.0,
                                                  "height": 72.0}
