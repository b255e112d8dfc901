"""Execution providers: what a session asked for, what onnxruntime really used, and the log."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import onnxruntime as ort
import pytest

from agent.inference.config import SessionConfig
from agent.inference.session import InferenceSession
from scripts.harness import onnx_graphs as g


def test_missing_accelerator_is_warned_and_the_cpu_is_used(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = g.channel_mean_model(tmp_path / "mean.onnx")
    session = InferenceSession("m", SessionConfig(path=model, providers=["cuda", "cpu"]))
    assert session.providers == ["CPUExecutionProvider"]
    assert "providers ['cuda'] not available here" in caplog.text


def test_an_accelerator_listed_but_unusable_is_named_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime-gpu lists TensorRT and CUDA whenever their plugins are installed, even
    # where their own libraries are missing (seen on a GPU machine without TensorRT); the
    # real session then runs elsewhere. Here the list claims CUDA on a CPU-only build.
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", *available])
    model = g.channel_mean_model(tmp_path / "mean.onnx")
    with caplog.at_level(logging.WARNING):
        session = InferenceSession("m", SessionConfig(path=model, providers=["cuda", "cpu"]))
    assert session.providers == ["CPUExecutionProvider"]
    assert ("model m: CUDAExecutionProvider could not be used (its libraries are missing or "
            "fail to load); running on ['CPUExecutionProvider']") in caplog.text


def test_every_run_tells_how_slow_inference_is_here(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    import agent.inference.session as session_module

    monkeypatch.setattr(session_module, "_slowest_run_s", 0.0)
    model = g.channel_mean_model(tmp_path / "mean.onnx", size=512)
    session = InferenceSession("m", SessionConfig(path=model))
    images = np.ones((1, 3, 512, 512), np.float32)
    started = time.monotonic()
    session.run({"images": images})
    took = time.monotonic() - started
    assert 0 < session_module.slowest_run_s() <= took
    monkeypatch.setattr(session_module, "_slowest_run_s", 99.0)
    session.run({"images": images})
    assert session_module.slowest_run_s() == 99.0, "the longest run is kept"
