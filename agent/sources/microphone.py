"""Microphones (``microphones:``): the sources that capture audio (their settings are
``MicrophoneConfig`` in ``agent.sources.config``).

Two sources produce the same thing, mono float32 chunks at the model's rate (16 kHz), each
stamped with the wall-clock time of its end:

- ``MicrophoneSource``: a sound card through sounddevice (PortAudio), captured in a child
  process (``agent.sources.capture``, which says why) that downmixes to mono and streams the
  blocks over a pipe into a ring (``SampleRing``); resampling (soxr, streaming) happens on
  the reader's thread.
- ``WavFileSource``: a WAV file for demos and replay, paced in real time or as fast as it is
  read (``realtime: false``), optionally looped.

Opening and reading raise ``SourceError`` with a message that names the microphone; the worker
turns them into ``SourceState`` changes and reconnects with backoff.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import wave
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.clock import Clock
from agent.sources import capture
from agent.sources.capture import input_devices as input_devices  # for tests, benchmarks
from agent.sources.config import MicrophoneConfig

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

MODEL_SAMPLE_RATE = 16_000

# --------------------------------------------------------------------------- sources


class SourceError(Exception):
    """A source cannot be opened or read; the message names the microphone.

    ``permanent``: retrying cannot help (a corrupt file); otherwise the worker retries.
    """

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class SourceLost(SourceError):
    """A running source stopped delivering (device unplugged, server gone)."""


class SourceEnded(Exception):
    """A file source reached its end and does not loop."""


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 samples at the model's rate; ``end_time`` is the epoch time of their end."""

    samples: FloatArray
    end_time: float


class SampleRing:
    """A single-producer, single-consumer ring of float32 samples.

    Lock-free under the GIL: only the writer advances ``written`` and only the reader advances
    ``read_pos``, so the PortAudio callback never waits for the reader. The writer never
    overwrites unread samples: a block that does not fit is dropped and counted, which keeps
    what the reader holds intact.
    """

    def __init__(self, capacity: int) -> None:
        self._buf = np.zeros(capacity, dtype=np.float32)
        self.capacity = capacity
        self.written = 0
        self.read_pos = 0
        self.dropped_blocks = 0
        self.dropped_samples = 0
        # (written, time): a single reference swapped atomically, read as one by the reader.
        self._stamp: tuple[int, float] = (0, 0.0)

    def write(self, block: FloatArray, now: float) -> bool:
        """Append ``block`` (called from the capture callback); False when it was dropped."""
        n = len(block)
        if n > self.capacity - (self.written - self.read_pos):
            self.dropped_blocks += 1
            self.dropped_samples += n
            return False
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start:start + first] = block[:first]
        if first < n:
            self._buf[: n - first] = block[first:]
        self.written += n
        self._stamp = (self.written, now)
        return True

    def available(self) -> int:
        """Samples written and not yet read."""
        return self.written - self.read_pos

    def read(self, n: int, rate: float) -> AudioChunk:
        """Take up to ``n`` samples; the chunk's end time comes from the newest write's stamp."""
        n = min(n, self.available())
        out = np.empty(n, dtype=np.float32)
        start = self.read_pos % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._buf[start:start + first]
        if first < n:
            out[first:] = self._buf[: n - first]
        self.read_pos += n
        stamp_written, stamp_time = self._stamp
        return AudioChunk(out, stamp_time - (stamp_written - self.read_pos) / rate)


class _Resampler:
    """Streaming conversion to the model's rate (soxr keeps filter state between chunks)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: Any = None
        if in_rate != out_rate:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: FloatArray, last: bool = False) -> FloatArray:
        if self._stream is None:
            return samples
        return np.asarray(self._stream.resample_chunk(samples, last=last), dtype=np.float32)


class AudioSource(ABC):
    """Something that yields ``AudioChunk``s at ``MODEL_SAMPLE_RATE``."""

    def __init__(self, config: MicrophoneConfig, clock: Clock, stop: threading.Event) -> None:
        self.config = config
        self.clock = clock
        self.stop_event = stop
        self.target_rate = MODEL_SAMPLE_RATE

    @property
    def overflows(self) -> int:
        """Blocks of input dropped because the reader fell behind the capture."""
        return 0

    @property
    def driver_overruns(self) -> int:
        """Callbacks for which the driver or sound server reported lost input (xruns)."""
        return 0

    @abstractmethod
    def open(self) -> None:
        """Open the device or file; raises ``SourceError``."""

    @abstractmethod
    def read(self, max_wait: float, want: int = 0) -> AudioChunk | None:
        """The next chunk, or None when nothing arrived within ``max_wait`` seconds.

        ``want``: samples (at the model rate) the caller needs before it has work to do; the
        source waits for about that many, so a reader wakes per window, not per period.
        Raises ``SourceLost`` when the source went away, ``SourceEnded`` at a file's end.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device or file; safe to call twice and from another thread."""

    def describe(self) -> str:
        """What the source is, for log lines."""
        return str(self.config.file if self.config.file is not None else self.config.device)


class _PortAudio:
    """PortAudio inside this process, which the agent itself never uses (see ``capture``).

    Tests and benchmarks that look for a JACK server they started list devices here; a server
    started after PortAudio initialised is seen only after a re-initialise.
    """

    def rescan_now(self) -> None:
        """Re-read the device list (call it while every server it saw still runs)."""
        import sounddevice as sd

        sd._terminate()
        sd._initialize()


PORTAUDIO = _PortAudio()


class MicrophoneSource(AudioSource):
    """A sound card, captured by a child process (``agent.sources.capture``) into a ring.

    The child finds and opens the device and streams mono float32 blocks over a pipe; a
    reader thread here puts them into a ``SampleRing``. Losing the device ends the child;
    closing kills it, which returns at once whatever the driver is stuck in, and the next
    ``open`` starts a fresh child that sees the devices there now.
    """

    RING_SECONDS = 4.0
    """Capture buffered between callback and reader; the reader takes it every hop (0.48 s)."""

    STALL_SECONDS = 3.0
    """No samples for this long on a started stream means the device is gone."""

    OPEN_TIMEOUT = 10.0
    """Starting the child (Python, numpy, PortAudio: seconds on a Pi) and opening the device;
    below the watchdog's hang limit, since the worker cannot beat meanwhile."""

    def __init__(self, config: MicrophoneConfig, clock: Clock, stop: threading.Event) -> None:
        super().__init__(config, clock, stop)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._ring: SampleRing | None = None
        self._driver_overflows = 0
        self._resample: _Resampler | None = None
        self._rate = 0
        self._last_data = 0.0
        self._ended: str | None = None  # why the child stopped, once it has
        self._stderr_tail: deque[str] = deque(maxlen=5)
        self._lock = threading.Lock()
        self.device_name: str | None = None

    @property
    def overflows(self) -> int:
        ring = self._ring
        return ring.dropped_blocks if ring is not None else 0

    @property
    def driver_overruns(self) -> int:
        return self._driver_overflows

    @property
    def capture_pid(self) -> int | None:
        """The capture child's process id while it runs (benchmarks count its CPU)."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def open(self) -> None:
        cfg = self.config
        assert cfg.device is not None
        spec = {"id": cfg.id, "device": cfg.device, "channels": cfg.channels,
                "sample_rate": cfg.sample_rate, "block_seconds": cfg.block_seconds}
        # A microphone must never start a sound server (libjack would, per attempt).
        env = {**os.environ, "JACK_NO_START_SERVER": "1"}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent.sources.capture", json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, close_fds=True,
            )
        except OSError as exc:
            raise SourceError(f"microphone {cfg.id}: cannot start the capture process: "
                              f"{exc.strerror or exc}") from exc
        with self._lock:
            self._proc = proc
        self._ended = None
        self._stderr_tail.clear()
        threading.Thread(target=self._log_stderr, args=(proc,), name=f"mic-stderr:{cfg.id}",
                         daemon=True).start()
        info = self._opened(proc)
        rate = int(info["rate"])
        self._rate = rate
        self._ring = SampleRing(int(rate * self.RING_SECONDS))
        self._resample = _Resampler(rate, self.target_rate)
        self.device_name = str(info["name"])
        self._last_data = self.clock.monotonic()
        self._reader = threading.Thread(target=self._read_pipe, args=(proc, self._ring),
                                        name=f"mic-capture:{cfg.id}", daemon=True)
        self._reader.start()
        logger.info("microphone %s: capturing from %r (%s) at %d Hz, %d channel(s)",
                    cfg.id, info["name"], info["hostapi"], rate, cfg.channels)

    def _opened(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Wait for the child's first frame: the device it opened, or why it could not."""
        assert proc.stdout is not None
        cfg = self.config
        end = time.monotonic() + self.OPEN_TIMEOUT  # real time: a process starting
        while True:
            left = end - time.monotonic()
            if self.stop_event.is_set() or left <= 0:
                self.close()
                if self.stop_event.is_set():
                    raise SourceError(f"microphone {cfg.id}: stopping")
                raise SourceError(f"microphone {cfg.id}: the capture process did not open "
                                  f"{cfg.device!r} within {self.OPEN_TIMEOUT:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.25))
            if ready:
                break
        frame = capture.read_frame(proc.stdout)
        if frame is not None and frame[0] == b"I":
            info: dict[str, Any] = json.loads(frame[1])
            return info
        self.close()
        if frame is not None and frame[0] == b"E":
            raise SourceError(str(json.loads(frame[1])["message"]))
        raise SourceError(f"microphone {cfg.id}: the capture process failed: "
                          f"{self._why_child_ended(proc)}")

    def _why_child_ended(self, proc: subprocess.Popen[bytes]) -> str:
        try:
            code = proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        tail = "; ".join(self._stderr_tail)
        return (f"exit code {code}" if code is not None else "no answer") + (
            f" ({tail})" if tail else "")

    def _read_pipe(self, proc: subprocess.Popen[bytes], ring: SampleRing) -> None:
        """The reader thread: the child's blocks into the ring, until its pipe ends."""
        assert proc.stdout is not None
        header = capture.OVERRUNS.size
        try:
            while True:
                frame = capture.read_frame(proc.stdout)
                if frame is None:
                    self._ended = (f"microphone {self.config.id}: the capture process ended "
                                   f"({self._why_child_ended(proc)})")
                    return
                kind, payload = frame
                if kind == b"D":
                    self._driver_overflows = capture.OVERRUNS.unpack_from(payload)[0]
                    ring.write(np.frombuffer(payload, np.float32, offset=header),
                               self.clock.time())
                elif kind == b"E":
                    self._ended = str(json.loads(payload)["message"])
                    return
        except (OSError, ValueError) as exc:  # the pipe closed under us: we closed it
            self._ended = f"microphone {self.config.id}: capture pipe closed: {exc}"

    def _log_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        """Native libraries' lines from the child (JACK, ALSA), at debug level."""
        assert proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in proc.stderr:
                line = raw.decode(errors="replace").strip()
                if line:
                    self._stderr_tail.append(line)
                    logger.debug("microphone %s: capture: %s", self.config.id, line)

    def read(self, max_wait: float, want: int = 0) -> AudioChunk | None:
        ring, resample = self._ring, self._resample
        if ring is None or resample is None or self._proc is None:
            raise SourceLost(f"microphone {self.config.id}: not open")
        deadline = self.clock.monotonic() + max_wait
        # Sleep until the samples the reader needs should be there (at least one 20 ms
        # period): a couple of wake-ups per window instead of one per period.
        want = max(self._rate // 50, -(-want * self._rate // self.target_rate))
        while (have := ring.available()) < want:
            now = self.clock.monotonic()
            if self._ended is not None:
                raise SourceLost(self._ended)
            if now - self._last_data > self.STALL_SECONDS:
                raise SourceLost(f"microphone {self.config.id}: no audio from "
                                 f"{self.device_name!r} for {now - self._last_data:.1f} s")
            if now >= deadline or self.stop_event.is_set():
                return None
            self.stop_event.wait(min(deadline - now, (want - have) / self._rate + 0.002, 0.25))
        self._last_data = self.clock.monotonic()
        chunk = ring.read(ring.available(), self._rate)
        samples = resample(chunk.samples)
        return AudioChunk(samples, chunk.end_time)

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        # SIGKILL: nothing in the child needs cleaning up, and a driver stuck in native code
        # (a vanished JACK server) cannot hold up a kill.
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:  # in the kernel's hands (a D-state driver call)
            logger.warning("microphone %s: the capture process %d did not end within 2 s",
                           self.config.id, proc.pid)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(1.0)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _decode_pcm(raw: bytes, width: int, channels: int) -> FloatArray:
    """Interleaved PCM bytes as mono float32 in [-1, 1]."""
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    else:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    if channels > 1:
        x = x[: len(x) - len(x) % channels].reshape(-1, channels).mean(axis=1)
    return x.astype(np.float32, copy=False)


class WavFileSource(AudioSource):
    """A PCM WAV file, read in chunks, paced in real time unless ``realtime: false``.

    Unpaced, chunk times advance with the audio from the time the file was opened, so a replay
    gives the same event times however fast it runs.
    """

    CHUNK_SECONDS = 0.1
    """Unpaced chunk length: fewer, larger reads when nothing waits for them."""
    REALTIME_CHUNK_SECONDS = 0.02
    """Shortest paced chunk: a sound card's period."""

    def __init__(self, config: MicrophoneConfig, clock: Clock, stop: threading.Event) -> None:
        super().__init__(config, clock, stop)
        self._wav: wave.Wave_read | None = None
        self._resample: _Resampler | None = None
        self._emitted = 0  # samples at the model rate since open
        self._drained = False
        self._t0_wall = 0.0
        self._t0_mono = 0.0
        self.duration_s = 0.0

    def open(self) -> None:
        cfg = self.config
        assert cfg.file is not None
        path = cfg.file
        if not path.is_file():
            raise SourceError(f"microphone {cfg.id}: file {path} not found", permanent=True)
        try:
            wav = wave.open(str(path), "rb")  # noqa: SIM115 (kept open while streaming)
        except (wave.Error, EOFError, OSError) as exc:
            raise SourceError(
                f"microphone {cfg.id}: {path} is not a PCM WAV file or is corrupt: "
                f"{str(exc) or 'truncated header'} "
                "(convert with: sox IN -b 16 OUT.wav)", permanent=True,
            ) from exc
        width, channels, rate, frames = (
            wav.getsampwidth(), wav.getnchannels(), wav.getframerate(), wav.getnframes()
        )
        if width not in (1, 2, 3, 4) or channels < 1 or rate < 1000 or frames == 0:
            wav.close()
            raise SourceError(
                f"microphone {cfg.id}: {path}: unusable WAV ({width * 8}-bit, {channels} "
                f"channel(s), {rate} Hz, {frames} frames)", permanent=True,
            )
        self._wav = wav
        self._resample = _Resampler(rate, self.target_rate)
        self.duration_s = frames / rate
        self._emitted = 0
        self._drained = False
        self._t0_wall = self.clock.time()
        self._t0_mono = self.clock.monotonic()
        logger.info("microphone %s: playing %s (%.1f s, %d Hz, %d channel(s))%s", cfg.id, path,
                    self.duration_s, rate, channels, " in a loop" if cfg.loop else "")

    def read(self, max_wait: float, want: int = 0) -> AudioChunk | None:
        wav, resample = self._wav, self._resample
        if wav is None or resample is None:
            raise SourceLost(f"microphone {self.config.id}: not open")
        seconds = self.REALTIME_CHUNK_SECONDS if self.config.realtime else self.CHUNK_SECONDS
        # Paced, a chunk arrives when its last sample would have: reading what the reader
        # wants in one piece costs no latency and saves wake-ups (capped at 0.5 s).
        seconds = min(max(seconds, want / self.target_rate), max(seconds, 0.5))
        n = max(1, int(wav.getframerate() * seconds))
        try:
            raw = wav.readframes(n)
        except (wave.Error, EOFError, OSError, ValueError) as exc:
            raise SourceError(f"microphone {self.config.id}: reading {self.config.file}: {exc}",
                              permanent=True) from exc
        if not raw:
            if not self.config.loop:
                if self._drained:
                    raise SourceEnded
                # The resampler still holds its last few milliseconds: hand them out first.
                self._drained = True
                samples = resample(np.zeros(0, np.float32), last=True)
                return self._deliver(samples) if len(samples) else None
            wav.rewind()
            raw = wav.readframes(n)
        return self._deliver(resample(_decode_pcm(raw, wav.getsampwidth(), wav.getnchannels())))

    def _deliver(self, samples: FloatArray) -> AudioChunk | None:
        self._emitted += len(samples)
        offset = self._emitted / self.target_rate
        if not self.config.realtime:
            return AudioChunk(samples, self._t0_wall + offset)
        # Deliver the chunk when its last sample would have been captured live.
        delay = self._t0_mono + offset - self.clock.monotonic()
        if delay > 0 and self.stop_event.wait(delay):
            return None
        return AudioChunk(samples, self.clock.time())

    def close(self) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            wav.close()


def open_source(config: MicrophoneConfig, clock: Clock, stop: threading.Event) -> AudioSource:
    """The source the configuration names (not yet opened)."""
    if config.file is not None:
        return WavFileSource(config, clock, stop)
    return MicrophoneSource(config, clock, stop)
