"""Camera sources: V4L2 devices, RTSP and other FFmpeg streams, HTTP MJPEG, files, folders.

One reader thread per camera pulls frames as fast as the camera sends them and keeps only
the newest one (``CameraCapture.read`` takes it), so when inference is slower than the
camera the surplus is dropped, never queued: latency stays one frame, whatever the load.
Frames are decoded only when due under the camera's ``fps`` cap, which is most of the CPU
a camera costs.

Video files are paced at their own frame rate by default (a replay looks like a camera);
``realtime: false`` hands over every due frame as soon as the consumer takes the previous
one, for tests and benchmarks. Event times then follow the file's timeline.

A camera's life is a ``SourceState`` machine, reported through its ``StateTracker``:
``starting`` -> ``running`` -> (``reconnecting`` -> ``running``)* -> ``ended`` (a file
without ``loop``) or ``error`` (a missing file: retrying will not help). Network streams and
devices are retried forever with exponential backoff between ``reconnect_min_s`` and
``reconnect_max_s``: a camera that boots after the board must come up by itself. Errors
are states, never exceptions out of the thread, so one bad camera never disturbs another.

Credentials in URLs (``rtsp://user:pass@host``, ``?token=...``) never reach a log line or a
status message: everything shown goes through ``agent.sources.urls``.

This module is the capture thread and its state machine; the readers it drives are beside it
(``opencv.py``: devices, streams, files, folders; ``mjpeg.py``; ``command.py``), and a
camera's settings are in ``agent.sources.config``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from agent.clock import Clock
from agent.logs import LineDeduplicator
from agent.sources.base import SourceState, StateTracker
from agent.sources.command import CommandReader
from agent.sources.config import CameraConfig
from agent.sources.mjpeg import MjpegReader
from agent.sources.opencv import FolderReader, OpenCvReader
from agent.sources.reader import CameraError, FrameReader
from agent.sources.urls import scrub

# cv2 is imported inside the readers, not here: the daemon imports this module (through
# agent.pipeline.vision) whatever its sources, and an agent without cameras should not load
# OpenCV (~17 MB of RSS).

logger = logging.getLogger(__name__)

# -- frames and rates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    ``t``: the camera's timeline in seconds (monotonic clock for live cameras, the file's own
    timeline for files and folders), used for intervals; ``wall``: epoch seconds for event
    times; ``captured``: monotonic time it was read, for latency.
    """

    image: npt.NDArray[np.uint8]
    seq: int
    t: float
    wall: float
    captured: float


class RateMeter:
    """Events per second over a sliding window; thread-safe."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._times and self._times[0] <= horizon:
            self._times.popleft()

    def rate(self, now: float) -> float:
        """Per second, over the window (or over the time since the first tick, if shorter)."""
        with self._lock:
            self._trim(now)
            if not self._times:
                return 0.0
            span = min(self.window_s, max(now - self._times[0], 1e-3))
            return len(self._times) / span if len(self._times) > 1 else 1.0 / self.window_s


class _Decimator:
    """Lets through at most one frame per ``period`` of timeline, on average, without drift."""

    def __init__(self, fps: float | None) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self._next: float | None = None

    def due(self, t: float) -> bool:
        if self.period == 0.0:
            return True
        if self._next is None or t >= self._next - 1e-3:
            nxt = (self._next if self._next is not None else t) + self.period
            # Fell behind by more than a period (a stall, a reconnect): restart from now.
            self._next = nxt if nxt > t else t + self.period
            return True
        return False

    def reset(self) -> None:
        self._next = None


# -- the reader thread ------------------------------------------------------------------------


class CameraCapture:
    """A camera's reader thread: newest-frame-wins handoff, state machine, reconnects.

    ``tracker`` is the owner's ``StateTracker``: the capture reports the camera's states
    through it. Counters are read by the worker's ``stats``.
    """

    def __init__(self, config: CameraConfig, tracker: StateTracker, clock: Clock) -> None:
        self.config = config
        self.tracker = tracker
        self._clock = clock
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._thread: threading.Thread | None = None
        self._reader: FrameReader | None = None
        self._decimator = _Decimator(config.fps)
        self.finished = threading.Event()
        self.frames_grabbed = 0
        self.frames_delivered = 0
        self.frames_dropped = 0
        self.decode_errors = 0
        self.grab_rate = RateMeter()
        self._damage: tuple[int, str] | None = None
        self._native_lines = LineDeduplicator()
        """Lines a command camera's child repeats on every restart are logged once."""
        self.epoch = 0
        """Counts (re)connections; the worker resets motion state when it changes."""

    @property
    def name(self) -> str:
        return f"camera {self.config.id}"

    # -- consumer side ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the reader thread."""
        self._stop.clear()
        self.finished.clear()
        self._thread = threading.Thread(target=self._guarded, name=f"capture:{self.config.id}",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the reader thread (unblocking a network read) and wait for it."""
        self._stop.set()
        reader = self._reader
        if reader is not None:
            reader.interrupt()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def read(self, timeout: float) -> Frame | None:
        """The newest frame not yet taken, waiting up to ``timeout`` s; None if none came."""
        with self._cond:
            if self._slot is None:
                self._cond.wait_for(lambda: self._slot is not None or self.finished.is_set()
                                    or self._stop.is_set(), timeout)
            frame, self._slot = self._slot, None
            if frame is not None:
                self._cond.notify_all()
            return frame

    # -- the thread -------------------------------------------------------------------------

    def _guarded(self) -> None:
        try:
            self._run()
        except Exception as exc:  # a bug here must be a state, not a dead thread
            logger.exception("%s: capture failed: %s", self.name, exc)
            self.tracker.set(SourceState.ERROR, scrub(f"capture failed: {exc}", self.config.url))
        finally:
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _open(self) -> FrameReader:
        kind = self.config.camera_type
        if kind == "mjpeg":
            return MjpegReader(self.config, self._stop)
        if kind == "folder":
            return FolderReader(self.config)
        if kind == "command":
            assert self.config.command is not None
            return CommandReader(self.config.command, self.name, self.config.timeout_s,
                                 announce=self.epoch == 0, dedup=self._native_lines)
        return OpenCvReader(self.config)

    def _run(self) -> None:
        config = self.config
        backoff = config.reconnect_min_s
        timeline = 0.0  # files: where the next pass starts on the camera's timeline
        wall_origin = self._clock.time()
        last_reason: str | None = None
        damage_told: str | None = None
        while not self._stop.is_set():
            try:
                reader = self._open()
            except CameraError as exc:
                reason = scrub(str(exc), config.url)
                if exc.permanent:
                    logger.error("%s: %s", self.name, reason)
                    self.tracker.set(SourceState.ERROR, reason)
                    return
                self._wait_retry(reason, backoff, repeated=reason == last_reason)
                last_reason = reason
                backoff = min(backoff * 2, config.reconnect_max_s)
                continue
            self._reader = reader
            self.epoch += 1
            try:
                outcome, delivered, timeline = self._pump(reader, timeline, wall_origin)
            finally:
                self._reader = None
                reader.close()
            if outcome == "stopped":
                return
            if delivered:
                backoff = config.reconnect_min_s
                last_reason = None
            if outcome == "end":
                if delivered == 0:
                    reason = f"{config.display_url}: no frame could be decoded"
                    logger.error("%s: %s", self.name, reason)
                    self.tracker.set(SourceState.ERROR, reason)
                    return
                if self._damage is not None:
                    # Damaged input is counted and said, not reported as a normal end.
                    lost, why = self._damage
                    self.decode_errors += lost
                    reason = f"{config.display_url} is damaged: {why}"
                    logger.log(logging.DEBUG if reason == damage_told else logging.WARNING,
                               "%s: %s", self.name, reason)
                    damage_told = reason
                    if not config.loop:
                        self.tracker.set(SourceState.ERROR, reason)
                        return
                if config.loop:
                    continue
                logger.info("%s: end of %s after %d frames", self.name, config.display_url,
                            self.frames_grabbed)
                self.tracker.set(SourceState.ENDED, f"end of {config.display_url}")
                return
            reason = scrub(f"stream from {config.display_url} stopped: {outcome}", config.url)
            self._wait_retry(reason, backoff, repeated=reason == last_reason)
            last_reason = reason
            backoff = min(backoff * 2, config.reconnect_max_s)

    def _wait_retry(self, reason: str, delay: float, repeated: bool) -> None:
        # The first failure is a warning; the same failure again only a debug line, so a
        # camera that is down for a day does not flood the journal.
        log = logger.debug if repeated else logger.warning
        log("%s: %s; retrying in %.1f s", self.name, reason, delay)
        self.tracker.set(SourceState.RECONNECTING, f"{reason}; retrying")
        self._stop.wait(delay)

    def _pump(self, reader: FrameReader, timeline: float,
              wall_origin: float) -> tuple[str, int, float]:
        """Read frames until the end, a failure or stop: (outcome, delivered, timeline)."""
        import cv2

        config = self.config
        finite = config.finite
        native = reader.native_fps or 25.0
        pace_origin: float | None = None
        passes = 0
        delivered = 0
        if not finite:
            self._decimator.reset()
        while True:
            if self._stop.is_set():
                return "stopped", delivered, timeline + passes / native
            if not reader.grab():
                if self._stop.is_set():
                    return "stopped", delivered, timeline + passes / native
                outcome = "end" if finite else reader.failure()
                self._damage = reader.damage() if finite else None
                return outcome, delivered, timeline + passes / native
            now = self._clock.monotonic()
            self.frames_grabbed += 1
            self.grab_rate.tick(now)
            if finite:
                t = timeline + passes / native
                passes += 1
                if config.realtime:
                    if pace_origin is None:
                        pace_origin = now - t
                    delay = pace_origin + t - now
                    if delay > 0 and self._stop.wait(delay):
                        return "stopped", delivered, timeline + passes / native
                    now = self._clock.monotonic()
                wall = self._clock.time() if config.realtime else wall_origin + t
            else:
                t = now
                wall = self._clock.time()
            if not self._decimator.due(t):
                continue
            image = reader.retrieve()
            if image is None:
                self.decode_errors += 1
                continue
            if config.resize is not None:
                size = config.resize.size_for(image.shape[1], image.shape[0])
                if size != (image.shape[1], image.shape[0]):
                    # INTER_LINEAR: INTER_AREA shrinks more smoothly but costs several times
                    # more at 1080p, on every frame.
                    image = np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
                                       dtype=np.uint8)
            if delivered == 0:
                self.tracker.set(SourceState.RUNNING)
                logger.info("%s: running (%s, %dx%d)", self.name, config.display_url,
                            image.shape[1], image.shape[0])
            delivered += 1
            self._publish(Frame(image, self.frames_grabbed, t, wall, now),
                          wait=finite and not config.realtime)

    def _publish(self, frame: Frame, wait: bool) -> None:
        with self._cond:
            if wait:
                # Files read as fast as consumed: hand over every due frame, one at a time.
                # The frame counts as captured when handed over; the wait is by design.
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
                frame = dataclasses.replace(frame, captured=self._clock.monotonic())
            if self._slot is not None:
                self.frames_dropped += 1
            self._slot = frame
            self.frames_delivered += 1
            self._cond.notify_all()
