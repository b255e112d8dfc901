"""Fixtures for the vision tests: the real default model, catalogue, generated media."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.clock import SystemClock
from agent.events.schema import DeviceRef, Event
from agent.sources.base import SourceStatus
from scripts.scenes import CrossingVideo, crossing_video

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"
MODEL_NAME = "yolov3-tiny-coco"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """``models/`` with the default detector built (``fetch_models`` is idempotent)."""
    from agent.inference.fetch import fetch_models

    fetch_models(MODELS, [MODEL_NAME], quiet=True)
    if not (MODELS / f"{MODEL_NAME}.onnx").is_file():
        pytest.fail(f"fetch_models did not produce {MODELS / MODEL_NAME}.onnx")
    return MODELS


@pytest.fixture(scope="session")
def detectors(models_dir: Path) -> dict[str, object]:
    from agent.inference.config import DetectorModelConfig

    return {MODEL_NAME: DetectorModelConfig(path=Path(f"{MODEL_NAME}.onnx"))}


@pytest.fixture(scope="session")
def detector(models_dir: Path, detectors: dict[str, object]) -> object:
    """One loaded default detector for the session (loading costs about a second)."""
    from agent.inference.detector import Detector

    return Detector(MODEL_NAME, detectors[MODEL_NAME], models_dir)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def catalogue() -> object:
    from agent.labels import LabelCatalogue

    return LabelCatalogue.load()


@pytest.fixture(scope="session")
def crossing(tmp_path_factory: pytest.TempPathFactory) -> CrossingVideo:
    """A motorbike crossing an empty street: 2 s empty, 5 s crossing, 8 s empty (10 fps)."""
    folder = tmp_path_factory.mktemp("media")
    return crossing_video(folder / "crossing.avi", still_after_s=8.0)


class Collector:
    """An event sink and status listener that records everything, thread-safely."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.statuses: list[SourceStatus] = []
        # Reentrant: predicates given to wait_for read through the same lock.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    def emit(self, event: Event) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def status(self, status: SourceStatus) -> None:
        with self._changed:
            self.statuses.append(status)
            self._changed.notify_all()

    def states(self) -> list[str]:
        with self._lock:
            return [s.state.value for s in self.statuses]

    def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 30.0) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def phases(self, track_id: str | None = None) -> list[str]:
        with self._lock:
            return [str(e.phase) for e in self.events
                    if track_id is None or e.track_id == track_id]


@pytest.fixture
def collector() -> Collector:
    return Collector()


@pytest.fixture
def device() -> DeviceRef:
    return DeviceRef(id="test-device")


@pytest.fixture
def clock() -> SystemClock:
    return SystemClock()


@pytest.fixture
def stop_later() -> Iterator[Callable[[object], object]]:
    """Register workers or servers to stop after the test, whatever happens."""
    items: list[object] = []

    def add(item: object) -> object:
        items.append(item)
        return item

    yield add
    for item in reversed(items):
        item.stop()  # type: ignore[attr-defined]
