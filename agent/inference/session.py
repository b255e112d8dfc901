"""A thin onnxruntime session wrapper: providers with fallback, threads, the file's digest."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from agent.inference.config import SessionConfig

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ModelRef(BaseModel):
    """The model that produced the predictions, pinned by the file's digest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str


class ModelLoadError(RuntimeError):
    """A model file is missing, corrupt or of a layout we cannot use."""


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_onnxruntime() -> ModuleType:
    """onnxruntime with its telemetry off; import it only through here.

    onnxruntime 1.32 starts Microsoft's telemetry (1DS) when the library loads: it writes a
    device id and an event database under ``$HOME/.cache/Microsoft/`` and may resolve
    ``*.events.data.microsoft.com``. ``ORT_DISABLE_TELEMETRY`` is read at load time, so it
    is set before the first import; ``disable_telemetry_events`` covers a library that was
    loaded elsewhere first. tests/inference/test_telemetry.py checks an agent run.
    """
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    ort.disable_telemetry_events()
    return ort


def resolve_providers(wanted: list[str], available: list[str]) -> list[str]:
    """Map config names to onnxruntime names, keeping only available ones; CPU always last."""
    chosen: list[str] = []
    for name in wanted:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full in available and full not in chosen:
            chosen.append(full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


_slowest_run_s = 0.0


def slowest_run_s() -> float:
    """Seconds of the longest single run of any session in this process so far, the probe
    each model gets at load time included: how slow inference is on this board."""
    return _slowest_run_s


class InferenceSession:
    """An onnxruntime session that knows its name, file digest and providers."""

    def __init__(self, name: str, config: SessionConfig, base_dir: Path | None = None) -> None:
        ort = load_onnxruntime()

        path = config.path
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        self.name = name
        self.path = path
        if not path.is_file():
            raise ModelLoadError(
                f"model {name}: file {path} not found (run `edge-agent models fetch`?)"
            )
        self.sha256 = file_sha256(path)
        available = ort.get_available_providers()
        providers = resolve_providers(config.providers, available)
        missing = [p for p in config.providers
                   if PROVIDER_ALIASES.get(p.lower(), p) not in providers]
        if missing:
            logger.warning("model %s: providers %s not available here (have %s); using %s",
                           name, missing, available, providers)
        options = ort.SessionOptions()
        if config.threads:
            options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        # Spinning worker threads keep burning CPU after each run; on a 2-4 core board that
        # steals time from capture and pre-processing and costs power while idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ModelLoadError(f"model {name}: cannot load {path}: {exc}") from exc
        self.providers = self._session.get_providers()
        if providers[0] != self.providers[0]:
            # onnxruntime lists an accelerator as available when its plugin is installed,
            # then falls back silently (in our log) when the plugin's own libraries are
            # missing, e.g. TensorRT's libnvinfer on a GPU machine without TensorRT.
            logger.warning("model %s: %s could not be used (its libraries are missing or "
                           "fail to load); running on %s", name, providers[0], self.providers)
        self.inputs = self._session.get_inputs()
        self.outputs = self._session.get_outputs()
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        """The model's metadata properties (an Ultralytics export names its classes here)."""

    @property
    def input_name(self) -> str:
        return str(self.inputs[0].name)

    def input_shape(self) -> list[Any]:
        """Shape of the first input, symbolic dims as strings or None."""
        return list(self.inputs[0].shape)

    def output_shapes(self) -> list[list[Any]]:
        return [list(o.shape) for o in self.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the graph on ``feeds``; returns every output."""
        global _slowest_run_s
        started = time.monotonic()
        outputs = list(self._session.run(None, feeds))
        took = time.monotonic() - started
        if took > _slowest_run_s:  # racy between threads, and only ever a bit low
            _slowest_run_s = took
        return outputs
