"""The audio worker end to end on WAV sources: real YAMNet, real lifecycle, real events."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.clock import ManualClock
from agent.events.schema import DeviceRef, Event
from agent.inference.audio import AudioClassifier
from agent.inference.config import AudioModelConfig, default_audio_models
from agent.pipeline.audio import AudioWorker, build_audio_worker
from agent.sources.base import SourceState, SourceStatus
from agent.sources.config import MicrophoneConfig
from tests.audio import samples
from tests.audio.samples import noise, siren, sound_in_quiet, speech, write_wav

# Fixtures shared by the audio tests (pytest finds them as module attributes).
models_dir = samples.models_dir
yamnet = samples.yamnet
catalogue = samples.catalogue

DEVICE = DeviceRef(id="edge-01")
T0 = 1_700_000_000.0  # ManualClock's start: unpaced files time their audio from here


class Run:
    """A worker, the events it emitted, and the states it reported."""

    def __init__(self, worker: AudioWorker, events: list[Event], states: list[SourceStatus]):
        self.worker = worker
        self.events = events
        self.states = states

    def of(self, label: str) -> list[Event]:
        return [e for e in self.events if e.label is not None and e.label.id == label]


def start(models_dir: Path, models: dict[str, AudioModelConfig] | None = None,
          **mic: Any) -> Run:
    events: list[Event] = []
    states: list[SourceStatus] = []
    cfg = MicrophoneConfig(id=mic.pop("id", "mic1"), realtime=mic.pop("realtime", False), **mic)
    worker = build_audio_worker(cfg, models or default_audio_models(), models_dir, DEVICE,
                                events.append, ManualClock(), states.append)
    worker.start()
    return Run(worker, events, states)


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def finish(run: Run) -> Run:
    wait_for(lambda: run.worker.tracker.state in (SourceState.ENDED, SourceState.ERROR))
    run.worker.stop()
    return run


def test_a_siren_is_one_sound_with_new_and_end(models_dir: Path, tmp_path: Path) -> None:
    # 2 s of faint noise, a 3 s siren, 4 s of faint noise.
    wav = write_wav(tmp_path / "siren.wav", sound_in_quiet(siren(3.0), 2.0, 4.0, 0.001))
    run = finish(start(models_dir, file=wav, listen=["siren"]))
    assert [e.phase for e in run.events] == ["new", "end"]
    new, end = run.events
    assert new.track_id == end.track_id
    assert new.label is not None and new.label.id == "siren" and new.label.name.ko == "사이렌"
    assert new.started_at is not None and end.ended_at is not None
    start_s = new.started_at.timestamp() - T0
    end_s = end.ended_at.timestamp() - T0
    assert 1.0 <= start_s <= 3.0 and 4.0 <= end_s <= 6.0, (start_s, end_s)
    assert end.sound is not None and end.sound.confidence >= 0.5
    assert end.sound.sound_level > -20 and end.sound.sound_level_threshold == -70.0
    # The clip on `end`: pre-roll (1 s) plus the sound, as a WAV.
    assert new.audio is None and end.audio is not None
    assert end.audio.content_type == "audio/wav" and end.audio.sample_rate == 16000
    assert 3.0 <= (end.audio.duration_s or 0) <= 6.0
    assert end.model is not None and end.model.name == "yamnet"
    assert end.source.kind == "microphone" and end.source.id == "mic1"
    assert {p.label.id for p in end.predictions[:2]} == {"siren", "alarm"}
    stats = run.worker.stats()
    assert stats["events_emitted"] == 2 and stats["overflows"] == 0
    assert stats["windows"] == stats["classified_windows"] + stats["gated_windows"] >= 15


def test_default_listen_on_a_siren_gives_one_occurrence_per_label(
    models_dir: Path, tmp_path: Path
) -> None:
    wav = write_wav(tmp_path / "siren.wav", sound_in_quiet(siren(3.0), 2.0, 4.0, 0.001))
    run = finish(start(models_dir, file=wav, clip={"on_new": True}))
    labels = {e.label.id for e in run.events if e.label}
    assert "siren" in labels and "speech" not in labels
    for label in labels:
        assert [e.phase for e in run.of(label)] == ["new", "end"]
    assert all(e.audio is not None for e in run.events)  # on_new attaches the clip so far


def test_quiet_input_never_runs_the_model(models_dir: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "quiet.wav", noise(5.0, rms=0.0001))  # -80 dBFS
    run = finish(start(models_dir, file=wav, min_volume=-60))
    stats = run.worker.stats()
    assert stats["windows"] >= 8
    assert stats["gated_windows"] == stats["windows"]
    assert stats["classified_windows"] == 0 and stats["inference_ms_p50"] is None
    assert -85 < stats["dbfs_last"] < -75
    assert run.events == []


def test_per_label_min_volume_keeps_soft_sounds_out(models_dir: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "soft.wav", sound_in_quiet(siren(3.0, amplitude=0.02), 1, 3))
    run = finish(start(models_dir, file=wav, listen=["siren"],
                       labels={"siren": {"min_volume": -20}}))
    assert run.worker.stats()["classified_windows"] > 0  # the microphone's gate let it through
    assert run.events == []  # but a -37 dBFS siren is below what this label asks for


def test_speech_with_vad(models_dir: Path, tmp_path: Path) -> None:
    x = sound_in_quiet(speech(tmp_path), 1.0, 3.0, 0.001)
    run = finish(start(models_dir, file=write_wav(tmp_path / "s.wav", x), listen=["speech"],
                       vad={"enabled": True}))
    assert [e.phase for e in run.events] == ["new", "end"]
    assert run.events[0].label.name.en == "Speech"  # type: ignore[union-attr]
    # Noise the classifier might mistake for speech never passes the VAD.
    run = finish(start(models_dir, file=write_wav(tmp_path / "n.wav", noise(4.0, 0.05)),
                       listen=["speech"], threshold=0.0, vad={"enabled": True}))
    assert run.events == []


def test_label_name_override(models_dir: Path, tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "siren.wav", sound_in_quiet(siren(2.0), 1.0, 3.0))
    run = finish(start(models_dir, file=wav, listen=["siren"],
                       labels={"siren": {"threshold": 0.3, "name": {"ko": "비상 사이렌"}}}))
    label = run.events[0].label
    assert label is not None and (label.name.en, label.name.ko) == ("Siren", "비상 사이렌")
    assert run.events[0].sound.confidence_threshold == 0.3  # type: ignore[union-attr]


# --------------------------------------------------------------------------- bad input


def errored(run: Run) -> str:
    wait_for(lambda: run.worker.tracker.state is SourceState.ERROR, timeout=20)
    detail = run.worker.tracker.status.detail or ""
    run.worker.stop()
    assert run.worker.stats()["state"] == "stopped"
    return detail


def test_bad_inputs_are_errors_naming_the_microphone_and_model(
    models_dir: Path, tmp_path: Path
) -> None:

    good = write_wav(tmp_path / "siren.wav", sound_in_quiet(siren(3.0), 1.0, 3.0))
    other = start(models_dir, id="healthy", file=good, listen=["siren"])  # keeps working
    bad_file = tmp_path / "notes.wav"
    bad_file.write_text("not audio")
    detail = errored(start(models_dir, id="corrupt", file=bad_file))
    assert detail.startswith("microphone corrupt: ") and "not a PCM WAV file" in detail

    detail = errored(start(models_dir, id="nomodel", file=good, model="panns"))
    assert detail == ("microphone nomodel: model 'panns' is not in models.audio "
                      "(have: yamnet)")

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[2, 3], keepdims=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 96, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "wrong.onnx"))
    models = {"wrong": AudioModelConfig(path=tmp_path / "wrong.onnx")}
    detail = errored(start(models_dir, models, id="shape", file=good, model="wrong"))
    assert detail.startswith("microphone shape: model wrong: input 'x' has shape [1, 3, 96, 96]")

    detail = errored(start(models_dir, id="typo", file=good, listen=["sirne"]))
    assert "microphones.typo.listen: unknown label 'sirne'" in detail

    finish(other)
    assert [e.phase for e in other.events] == ["new", "end"]


def test_unknown_device_is_an_error_and_retried(models_dir: Path) -> None:
    pytest.importorskip("sounddevice")
    run = start(models_dir, id="usb", device="No Such Microphone 9000",
                reconnect_min_s=0.05, reconnect_max_s=0.1)
    detail = errored(run)
    assert detail.startswith("microphone usb: no input device matches 'No Such Microphone 9000'")
    assert "retrying in" in detail


def test_shared_classifier_between_microphones(models_dir: Path, tmp_path: Path,
                                               yamnet: AudioClassifier) -> None:
    wav = write_wav(tmp_path / "s.wav", sound_in_quiet(siren(2.0), 1.0, 3.0))
    shared = {"yamnet": yamnet}
    workers = [
        build_audio_worker(MicrophoneConfig(id=f"m{i}", file=wav, realtime=False,
                                            listen=["siren"]),
                           default_audio_models(), models_dir, DEVICE, lambda e: None,
                           ManualClock(), classifiers=shared)
        for i in range(2)
    ]
    assert all(w.classifier is yamnet for w in workers)


def test_realtime_pacing_and_latency(models_dir: Path, tmp_path: Path) -> None:
    from agent.clock import SystemClock

    wav = write_wav(tmp_path / "s.wav", sound_in_quiet(siren(1.5), 0.5, 0.2))
    events: list[Event] = []
    cfg = MicrophoneConfig(id="live", file=wav, listen=["siren"], max_not_heard=0.5)
    worker = build_audio_worker(cfg, default_audio_models(), models_dir, DEVICE, events.append,
                                SystemClock())
    t0 = time.monotonic()
    worker.start()
    wait_for(lambda: worker.tracker.state is SourceState.ENDED, timeout=30)
    elapsed = time.monotonic() - t0
    worker.stop()
    assert elapsed >= 2.0  # a 2.2 s file takes (about) 2.2 s when paced
    assert [e.phase for e in events] == ["new", "end"]
    assert worker.stats()["event_latency_ms_p50"] is not None
    assert np.isfinite(worker.stats()["pipeline_ms_p95"])
