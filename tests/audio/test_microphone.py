"""Microphone configuration, the capture ring, and the WAV source."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.clock import ManualClock
from agent.sources.config import DEFAULT_LISTEN, MicrophoneConfig, validate_listen
from agent.sources.microphone import SampleRing, SourceEnded, SourceError, WavFileSource
from tests.audio import samples
from tests.audio.samples import siren, write_wav

# Fixtures shared by the audio tests (pytest finds them as module attributes).
catalogue = samples.catalogue


def test_device_or_file_exactly_one() -> None:
    assert MicrophoneConfig(id="m", device="default").device == "default"
    assert MicrophoneConfig(id="m", device=2).device == 2
    for kwargs in ({}, {"device": "default", "file": "a.wav"}):
        with pytest.raises(ValidationError, match=r"microphone m: set exactly one of `device`"):
            MicrophoneConfig(id="m", **kwargs)


def test_validation_errors_name_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        MicrophoneConfig(id="m", device="default", min_volume=5,
                         labels={"glass": {"threshold": 2}})
    locs = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert locs == {"min_volume", "labels.glass.threshold"}
    with pytest.raises(ValidationError, match="reconnect_max_s"):
        MicrophoneConfig(id="m", device=0, reconnect_min_s=10, reconnect_max_s=5)


def test_per_label_settings_fall_back_to_the_microphone() -> None:
    cfg = MicrophoneConfig(id="m", device=0, threshold=0.4, min_volume=-60,
                           labels={"glass": {"threshold": 0.3, "min_volume": -40,
                                             "name": {"en": "Window glass"}}})
    assert (cfg.label_threshold("glass"), cfg.label_min_volume("glass")) == (0.3, -40)
    assert (cfg.label_threshold("speech"), cfg.label_min_volume("speech")) == (0.4, -60)


def test_validate_listen_names_the_microphone_and_label(catalogue: object) -> None:
    known = {info.id for info in catalogue.audioset()}  # type: ignore[attr-defined]
    assert set(DEFAULT_LISTEN) <= known
    assert validate_listen(MicrophoneConfig(id="m", device=0), known) == []
    cfg = MicrophoneConfig(id="kitchen", device=0, listen=["speech", "glas"],
                           labels={"dogg": {"threshold": 0.2}})
    problems = validate_listen(cfg, known)
    assert len(problems) == 2
    assert "microphones.kitchen.listen: unknown label 'glas' (microphone kitchen" in problems[0]
    assert "microphones.kitchen.labels: unknown label 'dogg'" in problems[1]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 40)), max_size=80))
def test_ring_never_reorders_or_corrupts(ops: list[tuple[bool, int]]) -> None:
    ring = SampleRing(64)
    written: list[float] = []
    read: list[float] = []
    counter = 0
    for is_write, n in ops:
        if is_write:
            block = np.arange(counter, counter + n, dtype=np.float32)
            counter += n
            if ring.write(block, now=float(counter)):
                written.extend(block.tolist())
        else:
            read.extend(ring.read(n, rate=1.0).samples.tolist())
    read.extend(ring.read(ring.available(), rate=1.0).samples.tolist())
    assert read == written  # dropped blocks are whole blocks; nothing else is lost or moved
    assert ring.dropped_samples == counter - len(written)


def test_ring_stamps_chunk_end_times() -> None:
    ring = SampleRing(100)
    ring.write(np.zeros(50, np.float32), now=10.0)  # 50 samples ending at t = 10 s (rate 10)
    chunk = ring.read(20, rate=10.0)
    assert chunk.end_time == pytest.approx(7.0)  # 30 samples later is the stamp


def _open(tmp_path: Path, **kw: object) -> WavFileSource:
    cfg = MicrophoneConfig(id="replay", realtime=False, **kw)  # type: ignore[arg-type]
    src = WavFileSource(cfg, ManualClock(), threading.Event())
    src.open()
    return src


def test_wav_source_resamples_and_downmixes(tmp_path: Path) -> None:
    import soxr

    x = siren(1.0, rate=44100)
    src = _open(tmp_path, file=write_wav(tmp_path / "s.wav", x, rate=44100, channels=2))
    out = []
    with pytest.raises(SourceEnded):
        while True:
            chunk = src.read(0.1)
            assert chunk is not None
            out.append(chunk.samples)
    y = np.concatenate(out)
    ref = soxr.resample(x, 44100, 16000)
    assert abs(len(y) - 16000) < 200  # the resampler's delay line holds back a few ms
    assert np.allclose(y[1000:15000], ref[1000:15000], atol=2e-3)


def test_wav_source_loops_and_times_follow_the_audio(tmp_path: Path) -> None:
    src = _open(tmp_path, file=write_wav(tmp_path / "s.wav", siren(0.25)), loop=True)
    t0 = ManualClock().time()
    total = 0
    for _ in range(20):
        chunk = src.read(0.1)
        assert chunk is not None
        total += len(chunk.samples)
    assert total > 16000  # more than the 0.25 s file: it looped
    assert chunk.end_time == pytest.approx(t0 + total / 16000)


@pytest.mark.parametrize(("content", "why"), [
    (b"", "not a PCM WAV file or is corrupt: truncated"),
    (b"ID3\x03\x00 this is an mp3, honest", "not a PCM WAV file or is corrupt"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00", "not a PCM WAV file or is corrupt"),
])
def test_bad_files_name_the_microphone(tmp_path: Path, content: bytes, why: str) -> None:
    (tmp_path / "bad.wav").write_bytes(content)
    with pytest.raises(SourceError, match=f"microphone replay: .*bad.wav is {why}") as info:
        _open(tmp_path, file=tmp_path / "bad.wav")
    assert info.value.permanent


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"microphone replay: file .*nope\.wav not found"):
        _open(tmp_path, file=tmp_path / "nope.wav")
