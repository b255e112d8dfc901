"""OpenCV's and FFmpeg's own messages, through the agent's log, once each.

OpenCV and the FFmpeg inside it write straight to the process's stderr in their own format
(``[rtsp @ 0x55d1...] method DESCRIBE failed: 401 (Unauthorized)``,
``[ WARN:0@12.3] global cap.cpp:212 open VIDEOIO(FFMPEG): ...``), on every retry of a dead
camera: thousands of lines a day, outside the agent's "same failure logged once" rule.

``install`` points file descriptor 2 at a pipe read by a thread (``native-log``) and keeps
the real stderr for the agent's own handlers. Each line read is re-emitted through the
logger ``agent.native`` at a level from its tag, redacted, and de-duplicated
(``agent.logs.LineDeduplicator``: once per kind of line per 10 minutes). Recent lines are
kept, numbered, so that a camera that failed to open can ask what the library said while it
tried (``since``) and name the cause in its status (``cause``): the credentials refused (401),
a wrong path (404), a refused connection, a timeout.

It is process-wide because file descriptor 2 is; only ``edge-agent run`` installs it (tests
in one process and other commands leave stderr alone). Native lines are not tied to a
camera: when two cameras fail at the same instant, each may see the other's line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import deque
from typing import TextIO

from agent.logs import LineDeduplicator, redact

logger = logging.getLogger("agent.native")

_OPENCV = re.compile(
    r"^\[\s*(?P<level>[A-Z]+):[^\]]*\]\s*(?:global\s+)?(?:\S+:\d+\s+)?(?P<msg>.*)$"
)
_FFMPEG = re.compile(r"^\[(?P<what>[\w.-]+) @ 0x[0-9a-fA-F]+\]\s*(?P<msg>.*)$")
_LEVELS = {"FATAL": logging.ERROR, "ERROR": logging.ERROR, "WARN": logging.WARNING,
           "INFO": logging.INFO, "DEBUG": logging.DEBUG, "VERBOSE": logging.DEBUG}
_KEEP = 256
_DECODE_ERROR = re.compile(
    r"(error while decoding|invalid data found|corrupt|concealing|truncat|overread|"
    r"error count|error y=|invalid len|unable to decode|missing picture|invalid nal|"
    r"moov atom not found)", re.IGNORECASE)

# The causes a camera's status can name, first match wins.
_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b401\b|unauthori[sz]ed", re.I),
     "the camera refused the credentials (401 Unauthorized: check the credentials)"),
    (re.compile(r"\b403\b|forbidden", re.I),
     "the camera refused access (403 Forbidden: check the credentials)"),
    (re.compile(r"\b404\b|not found", re.I), "no such stream (404 Not Found: wrong path)"),
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"timed? ?out|timeout", re.I), "timed out"),
    (re.compile(r"no route to host|network is unreachable", re.I), "host unreachable"),
    (re.compile(r"name or service not known|failed to resolve|resolv", re.I),
     "cannot resolve the host name"),
    (re.compile(r"invalid data found", re.I), "not a video stream FFmpeg can read"),
)


# Lines that only say "opening failed": the camera's own line says that, with the cause.
_NOISE = re.compile(r"backend is generally available but can't be used to capture by name|"
                    r"can't open camera by index")


def cause(lines: list[str]) -> str | None:
    """The failure the library's own lines name, in words an operator can act on."""
    for pattern, words in _CAUSES:
        if any(pattern.search(line) for line in lines):
            return words
    return None


def is_decode_error(line: str) -> bool:
    """Whether a native line reports damaged video input (counted, not a normal end)."""
    return bool(_DECODE_ERROR.search(line))


def parse(line: str) -> tuple[int, str]:
    """(level, message) of one native line, its address and source position dropped."""
    match = _OPENCV.match(line)
    if match:
        return _LEVELS.get(match["level"], logging.WARNING), "OpenCV: " + match["msg"]
    match = _FFMPEG.match(line)
    if match:
        return logging.WARNING, f"FFmpeg {match['what']}: {match['msg']}"
    return logging.WARNING, line


class NativeLogCapture:
    """Reads what native code writes to file descriptor 2; see the module docstring."""

    def __init__(self, read_fd: int) -> None:
        self._fd = read_fd
        self._lock = threading.Lock()
        self._recent: deque[tuple[int, str]] = deque(maxlen=_KEEP)
        self._seq = 0
        self._dedup = LineDeduplicator()
        self._thread = threading.Thread(target=self._run, name="native-log", daemon=True)
        self._thread.start()

    def mark(self) -> int:
        """A position in the stream of lines; ``since(mark)`` returns what came after."""
        with self._lock:
            return self._seq

    def since(self, mark: int, settle_s: float = 0.1) -> list[str]:
        """Lines read after ``mark``, waiting ``settle_s`` for ones still in the pipe."""
        if settle_s > 0:
            time.sleep(settle_s)
        with self._lock:
            return [line for seq, line in self._recent if seq > mark]

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except OSError:
                return
            if not data:
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._emit(raw.decode("utf-8", "replace").rstrip("\r"))

    def _emit(self, line: str) -> None:
        line = redact(line.strip())
        if not line:
            return
        with self._lock:
            self._seq += 1
            self._recent.append((self._seq, line))
        level, message = parse(line)
        if _NOISE.search(message):
            logger.debug("%s", message)
            return
        show, repeats = self._dedup.check(message)
        if show:
            more = f" (and {repeats} times since it was last shown)" if repeats else ""
            logger.log(level, "%s%s", message, more)
        else:
            logger.debug("%s", message)


_capture: NativeLogCapture | None = None


def install() -> NativeLogCapture:
    """Capture file descriptor 2 for the rest of the process (idempotent).

    The agent's own handlers writing to stderr are moved to a duplicate of the real stderr
    first, so their lines still reach the journal directly and are not read back.
    """
    global _capture
    if _capture is not None:
        return _capture
    sys.stderr.flush()
    real = os.dup(2)
    stream: TextIO = open(real, "w", buffering=1, encoding="utf-8",  # noqa: SIM115
                          errors="replace", closefd=False)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (
            sys.stderr, sys.__stderr__
        ):
            handler.setStream(stream)
    sys.stderr = stream
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    _capture = NativeLogCapture(read_fd)
    return _capture


def current() -> NativeLogCapture | None:
    """The capture, when ``install`` ran in this process."""
    return _capture
