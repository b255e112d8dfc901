"""``edge-agent check-config --models``: models that would fail at start are found before it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from agent.config import EX_CONFIG
from scripts.harness import onnx_graphs as g

REPO = Path(__file__).resolve().parents[2]
BOXES = np.array([[10.0, 10.0, 50.0, 60.0]], np.float32)


def check(config: dict[str, object], path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "agent", "check-config", *flags, "-c", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_models_flag_reports_each_bad_model_on_its_own_line(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "three.names").write_text("# three classes\ncat\ndog\ncar\n", encoding="utf-8")
    (models / "two.names").write_text("cat\ndog\n", encoding="utf-8")
    # A YOLOv8 graph with 3 classes, and one whose only output fits no layout.
    g.constant_model(models / "v8.onnx", [g.yolov8_output(BOXES, np.array([0]),
                                                          np.array([0.9], np.float32), 3)],
                     (1, 3, 64, 64))
    g.constant_model(models / "odd.onnx", [np.zeros((1, 7, 9, 9), np.float32)], (1, 3, 64, 64))
    config = {
        "device": {"id": "t"},
        "outbox": {"path": str(tmp_path / "outbox")},
        "models": {"dir": str(models), "audio": {}, "detectors": {
            "good": {"path": "v8.onnx", "labels": "three.names"},
            "short-labels": {"path": "v8.onnx", "labels": "two.names"},
            "no-layout": {"path": "odd.onnx", "labels": "three.names"},
            "missing": {"path": "absent.onnx", "labels": "three.names"},
        }},
    }
    quick = check(config, tmp_path / "agent.yaml")
    assert quick.returncode == 0, quick.stderr  # the YAML itself is valid

    result = check(config, tmp_path / "agent.yaml", "--models")
    assert result.returncode == EX_CONFIG, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    text = "\n".join(lines)
    assert "models.detectors.short-labels: model short-labels: read as yolov8" in text
    assert "predict 3 classes but labels 'two.names' has 2 names" in text
    assert ("models.detectors.no-layout: model no-layout: unsupported output layout "
            "[1, 7, 9, 9]") in text
    assert "models.detectors.missing: model missing: file" in text and "absent.onnx" in text
    assert "good" not in text and "Traceback" not in text
    assert all(line.startswith(f"{tmp_path / 'agent.yaml'}: ") for line in lines)

    del config["models"]["detectors"]["short-labels"]  # type: ignore[index]
    del config["models"]["detectors"]["no-layout"]  # type: ignore[index]
    del config["models"]["detectors"]["missing"]  # type: ignore[index]
    fixed = check(config, tmp_path / "agent.yaml", "--models")
    assert fixed.returncode == 0, fixed.stderr
    assert ": OK" in fixed.stdout
