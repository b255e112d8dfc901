"""Cameras read from a command's stdout: Pi camera modules, Jetson CSI cameras, GStreamer.

A Raspberry Pi's camera module (CSI) is driven through libcamera and a Jetson's through
NVIDIA's Argus; the pip OpenCV reaches neither. Their own tools write frames to stdout, so
a ``command`` camera starts one of them and reads what it writes: raw ``bgr24``,
``yuv420p`` (I420) or ``nv12`` frames of a configured size, or an MJPEG stream (JPEG after
JPEG). The capture thread (``agent.sources.camera.CameraCapture``) drives it like any other
camera: it reads every frame as it comes, so the pipe never backs up into the child however
slow the detector is, and decodes only the frames due under ``fps``.

The child is started without a shell, in its own session; stdin is ``/dev/null``. When it
exits, or writes nothing for ``timeout_s``, the camera goes ``reconnecting`` with the reason
(its exit status and last stderr line) and the command is started again with the camera's
backoff. Its stderr goes through the agent's log, one line per distinct message (see
``agent.logs.LineDeduplicator``).

Presets expand to exact command lines (``CommandConfig.argv``):

- ``rpicam``: ``rpicam-vid -t 0 -n --camera N --width W --height H --framerate F
  --codec yuv420 -o -`` (``--codec mjpeg`` with ``format: mjpeg``);
- ``nvargus``: ``gst-launch-1.0 -q nvarguscamerasrc sensor-id=N !
  video/x-raw(memory:NVMM),width=W,height=H,framerate=F/1 ! nvvidconv !
  video/x-raw,format=I420 ! fdsink fd=1``;
- ``gstreamer``: RTSP decoded by the Jetson's hardware decoder: ``gst-launch-1.0 -q rtspsrc
  location=URL latency=200 protocols=tcp ! rtph264depay ! h264parse ! nvv4l2decoder !
  nvvidconv ! video/x-raw,format=I420,width=W,height=H ! fdsink fd=1`` (``h265``: the
  ``rtph265depay ! h265parse`` pair).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import IO

import numpy as np
import numpy.typing as npt

from agent.logs import LineDeduplicator, redact
from agent.sources.config import CommandConfig
from agent.sources.reader import CameraError, FrameReader

logger = logging.getLogger(__name__)

_READ_CHUNK = 1 << 16
_MAX_JPEG_BYTES = 32 << 20
"""An MJPEG frame larger than this is not one: the stream is garbage, start it again."""


# -- the child's stderr -----------------------------------------------------------------------


class _StderrRelay:
    """Reads a child's stderr on its own thread; each distinct line goes to the log once."""

    def __init__(self, stream: IO[bytes], prefix: str, secrets: list[str],
                 dedup: LineDeduplicator) -> None:
        self._stream = stream
        self._prefix = prefix
        self._secrets = secrets
        self._dedup = dedup
        self.last_line = ""
        self._thread = threading.Thread(target=self._run, name=f"stderr:{prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            # Progress lines end in \r; each piece is its own message.
            for piece in raw.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
                line = redact(piece.strip(), self._secrets)
                if not line:
                    continue
                self.last_line = line
                level = _level_of(line)
                show, repeats = self._dedup.check(line)
                if show:
                    more = f" (and {repeats} times since it was last shown)" if repeats else ""
                    logger.log(level, "%s: %s%s", self._prefix, line, more)
                else:
                    logger.debug("%s: %s", self._prefix, line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _level_of(line: str) -> int:
    lowered = line.lower()
    if any(word in lowered for word in ("error", "fail", "cannot", "could not", "no such",
                                        "not found", "denied", "invalid")):
        return logging.WARNING
    return logging.INFO


# -- the reader -------------------------------------------------------------------------------


class CommandReader(FrameReader):
    """One run of the command: frames read from its stdout, decoded to BGR on demand."""

    def __init__(self, config: CommandConfig, name: str, timeout_s: float,
                 announce: bool = True, dedup: LineDeduplicator | None = None) -> None:
        """Start the command. ``dedup`` is the camera's own, so that what a restarted child
        repeats is not logged again; ``announce`` logs the command line at info level."""
        self._config = config
        self._name = name
        self._timeout = timeout_s
        self._format = config.pixel_format
        self._width = config.width or 0
        self._height = config.height or 0
        self._frame_bytes = config.frame_bytes
        self._raw = bytearray(self._frame_bytes)
        self._pending = bytearray()  # MJPEG: bytes read past the current frame
        self._jpeg: bytes | None = None
        self._has_frame = False
        self._failure = "no more frames"
        self._interrupted = False
        self.native_fps = config.framerate if config.preset else None
        argv = config.command()
        secrets = [config.url] if config.url else []
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                bufsize=0, start_new_session=True,
            )
        except FileNotFoundError:
            hint = {"rpicam": " (install rpicam-apps)",
                    "nvargus": " (install GStreamer from JetPack)",
                    "gstreamer": " (install GStreamer from JetPack)"}.get(config.preset or "", "")
            raise CameraError(f"cannot start {config.display}: {argv[0]} not found{hint}") from None
        except OSError as exc:
            raise CameraError(f"cannot start {config.display}: {exc.strerror or exc}") from None
        # The whole command line once; restarts only at debug level (the reason was logged).
        logger.log(logging.INFO if announce else logging.DEBUG, "%s: started %s (pid %d)",
                   name, config.display_argv(), self._proc.pid)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._fd = self._proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)
        self._stderr = _StderrRelay(self._proc.stderr, f"{name} stderr", secrets,
                                    dedup if dedup is not None else LineDeduplicator())

    # -- reading ----------------------------------------------------------------------------

    def _read(self, limit: int, deadline: float) -> bytes:
        """Up to ``limit`` bytes from the child; b"" at its end; TimeoutError at deadline."""
        while True:
            try:
                data = os.read(self._fd, limit)
            except BlockingIOError:
                data = None
            except OSError:
                return b""
            if data is not None:
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self._selector.select(min(left, 0.5))
            if self._interrupted:
                return b""

    def grab(self) -> bool:
        deadline = time.monotonic() + self._timeout
        try:
            if self._format == "mjpeg":
                self._jpeg = self._next_jpeg(deadline)
                ok = self._jpeg is not None
            else:
                ok = self._fill_raw(deadline)
        except TimeoutError:
            self._failure = (f"no frame from {self._config.display} within "
                             f"{self._timeout:g} s")
            return False
        if not ok:
            self._failure = self._exit_reason()
        self._has_frame = ok
        return ok

    def _fill_raw(self, deadline: float) -> bool:
        view = memoryview(self._raw)
        got = 0
        while got < self._frame_bytes:
            data = self._read(self._frame_bytes - got, deadline)
            if not data:
                return False
            view[got:got + len(data)] = data
            got += len(data)
        return True

    def _next_jpeg(self, deadline: float) -> bytes | None:
        """The next whole JPEG (SOI to EOI) in the stream; None at the child's end."""
        buf = self._pending
        while True:
            end = _jpeg_end(buf)
            if end is not None:
                start = buf.find(b"\xff\xd8")
                frame = bytes(buf[start:end])
                del buf[:end]
                return frame
            if len(buf) > _MAX_JPEG_BYTES:
                raise TimeoutError  # garbage: treat as a stalled stream and start again
            data = self._read(_READ_CHUNK, deadline)
            if not data:
                return None
            buf += data

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        if not self._has_frame:
            return None
        import cv2

        w, h = self._width, self._height
        if self._format == "mjpeg":
            if not self._jpeg:
                return None
            image = cv2.imdecode(np.frombuffer(self._jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
            return np.asarray(image, dtype=np.uint8) if image is not None else None
        raw = np.frombuffer(self._raw, dtype=np.uint8)
        if self._format == "bgr24":
            return raw.reshape(h, w, 3).copy()
        code = cv2.COLOR_YUV2BGR_I420 if self._format == "yuv420p" else cv2.COLOR_YUV2BGR_NV12
        return np.asarray(cv2.cvtColor(raw.reshape(h * 3 // 2, w), code), dtype=np.uint8)

    # -- ending -----------------------------------------------------------------------------

    def _exit_reason(self) -> str:
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return f"{self._config.display} closed its output"
        self._stderr.join(0.5)
        if code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exited with status {code}"
        last = self._stderr.last_line
        return f"{self._config.display} {how}" + (f" ({last[:200]})" if last else "")

    def failure(self) -> str:
        return self._failure

    def interrupt(self) -> None:
        self._interrupted = True
        self._terminate(wait=False)

    def close(self) -> None:
        self._terminate(wait=True)
        self._selector.close()
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                stream.close()

    def _terminate(self, wait: bool) -> None:
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        if not wait:
            return
        try:
            self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            # A child that ignores SIGTERM (or a pipeline stuck in a driver) must still go.
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._proc.wait(timeout=2.0)


def _jpeg_end(buf: bytearray) -> int | None:
    """Offset just past the first complete JPEG in ``buf`` (from its SOI), or None.

    Walks the marker segments by their lengths up to start-of-scan, then the entropy-coded
    data to the first marker that is neither stuffing (``FF 00``) nor a restart (``FF D0``-
    ``FF D7``): an EXIF thumbnail's own end-of-image inside a segment does not end the frame.
    """
    start = buf.find(b"\xff\xd8")
    if start < 0:
        if len(buf) > 1:
            del buf[:-1]  # nothing before a SOI is worth keeping
        return None
    i = start + 2
    n = len(buf)
    while True:
        # Marker segments: FF xx, then a big-endian length that counts itself.
        while i < n and buf[i] == 0xFF and i + 1 < n and buf[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 2 <= n and buf[i] == 0xFF and buf[i + 1] == 0xD9:
            return i + 2
        if i + 4 > n:
            return None
        if buf[i] != 0xFF:
            # Not a marker where one must be: resynchronise on the next SOI.
            nxt = buf.find(b"\xff\xd8", start + 2)
            if nxt < 0:
                del buf[:max(0, n - 1)]
                return None
            del buf[:nxt]
            return _jpeg_end(buf)
        marker = buf[i + 1]
        length = (buf[i + 2] << 8) | buf[i + 3]
        if marker != 0xDA:
            i += 2 + length
            continue
        # Start of scan: entropy-coded data follows the header until the next real marker.
        j = i + 2 + length
        while True:
            k = buf.find(b"\xff", j)
            if k < 0 or k + 1 >= n:
                return None
            following = buf[k + 1]
            if following == 0x00 or 0xD0 <= following <= 0xD7 or following == 0xFF:
                j = k + 1 if following == 0xFF else k + 2
                continue
            i = k
            break
