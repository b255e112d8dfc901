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
status message: everything shown goes through ``redact_url``.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import logging
import re
import socket
import ssl
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.clock import Clock
from agent.events.classification import ClassifyConfig
from agent.events.objects import ObjectsConfig, Polygon, SnapshotsConfig, ZoneConfig
from agent.events.tracking import TrackingConfig
from agent.inference.motion import MotionConfig
from agent.sources.base import SourceState, StateTracker
from agent.sources.config import SourceCommon

# cv2 is imported inside the readers, not here: agent.config imports this module for
# CameraConfig, and an agent without cameras should not load OpenCV (~17 MB of RSS).

logger = logging.getLogger(__name__)

CameraType = Literal["device", "rtsp", "mjpeg", "stream", "file", "folder"]
"""How a camera is read: ``device`` (V4L2), ``rtsp``, ``mjpeg`` (HTTP(S) multipart JPEG or a
JPEG snapshot URL), ``stream`` (any other URL FFmpeg opens: rtmp, srt, HLS...), ``file``
(a video file), ``folder`` (a folder of images, in name order)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# -- credentials ------------------------------------------------------------------------------

_SECRET_PARAMS = re.compile(
    r"^(pass(word|wd)?|pwd|token|access_token|auth|authorization|key|api_?key|secret|"
    r"sig(nature)?|credentials?|session|sid)$",
    re.IGNORECASE,
)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")


def redact_url(url: str) -> str:
    """``url`` safe to log: ``user:pass@`` becomes ``***@`` and secret query values ``***``.

    Paths and device names come back unchanged. Something that does not parse is redacted
    by pattern rather than shown as is.
    """
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            netloc = "***@" + netloc.rsplit("@", 1)[1]
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode(
                [(k, "***" if _SECRET_PARAMS.match(k) else v) for k, v in pairs], safe="*/:,"
            )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return _USERINFO.sub(r"\g<scheme>***@", url.split("?", 1)[0]) + (
            "?***" if "?" in url else ""
        )


def _scrub(text: str, url: str | None) -> str:
    """An error message from a library, with the raw URL and its secrets taken out."""
    if not url or "://" not in url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        parts = urlsplit(url)
        secrets = [parts.username, parts.password]
        secrets += [v for k, v in parse_qsl(parts.query) if _SECRET_PARAMS.match(k)]
    except ValueError:
        secrets = []
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


# -- configuration ----------------------------------------------------------------------------


class ResizeConfig(BaseModel):
    """``cameras[].resize``: scale frames as they are captured; one side keeps the aspect."""

    model_config = ConfigDict(extra="forbid")

    width: int | None = Field(default=None, ge=16, le=8192)
    height: int | None = Field(default=None, ge=16, le=8192)

    @model_validator(mode="after")
    def _one_side(self) -> ResizeConfig:
        if self.width is None and self.height is None:
            raise ValueError("give width, height or both")
        return self

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a frame of ``width`` x ``height`` after resizing."""
        if self.width is not None and self.height is not None:
            return self.width, self.height
        if self.width is not None:
            return self.width, max(1, round(height * self.width / width))
        assert self.height is not None
        return max(1, round(width * self.height / height)), self.height


def infer_type(url: str) -> CameraType:
    """The camera type a URL or path implies."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp"
    if scheme in ("http", "https"):
        return "mjpeg"
    if scheme == "file":
        return "folder" if Path(urlsplit(url).path).is_dir() else "file"
    if scheme:
        return "stream"
    if re.match(r"^/dev/video\d+$", url):
        return "device"
    if url.endswith("/") or Path(url).is_dir():
        return "folder"
    return "file"


class CameraConfig(SourceCommon):
    """``cameras[]``: one camera, from capture to the events it emits.

    Give ``url`` (an ``rtsp://``, ``http(s)://`` URL, a video file, a folder of images,
    ``/dev/videoN``) or ``device`` (a V4L2 index), not both. ``type`` is inferred from it
    unless given. Each stage's part is defined next to the stage's code: ``motion`` in
    ``agent.inference.motion``; ``objects``, ``zones``, ``masks``, ``snapshots`` in
    ``agent.events.objects``; ``tracking`` in ``agent.events.tracking``.
    """

    url: str | None = Field(default=None, repr=False,
                            description="stream URL, file or folder path, or /dev/videoN")
    device: int | None = Field(default=None, ge=0, description="V4L2 device index")
    type: CameraType | None = Field(default=None, description="default: from url or device")
    loop: bool = Field(default=False, description="files and folders: start again at the end")
    realtime: bool = Field(default=True,
                           description="files and folders: pace at the file's frame rate "
                           "(false: as fast as frames are consumed)")
    fps: float | None = Field(default=5.0, gt=0, le=240,
                              description="frames per second processed at most (null: all)")
    resize: ResizeConfig | None = None
    model: str = Field(default="yolov3-tiny-coco", description="a key of models.detectors")
    objects: ObjectsConfig = Field(default_factory=ObjectsConfig)
    zones: dict[str, ZoneConfig] = Field(default_factory=dict)
    masks: list[Polygon] = Field(default_factory=list,
                                 description="regions to ignore (normalised polygons)")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig)
    classify: ClassifyConfig | None = Field(
        default=None, description="a classifier on frames, objects or on request "
        "(agent.events.classification)")
    reconnect_min_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    timeout_s: float = Field(default=10.0, gt=0, le=300,
                             description="network streams: open and read timeout")
    verify_tls: bool = Field(default=True,
                             description="https cameras: check the certificate (turn off only "
                             "for a camera with a self-signed certificate on a trusted network)")

    @model_validator(mode="after")
    def _source(self) -> CameraConfig:
        if (self.url is None) == (self.device is None):
            raise ValueError("give exactly one of url and device")
        if self.url is not None and not self.url.strip():
            raise ValueError("url: must not be empty")
        implied: CameraType = "device" if self.device is not None else infer_type(self.url or "")
        if self.type is None:
            self.type = implied
        elif self.device is not None and self.type != "device":
            raise ValueError(f"type: {self.type} needs a url, not a device index")
        elif self.url is not None and self.type != implied:
            network = ("rtsp", "mjpeg", "stream")
            if (self.type in network) != (implied in network) or (
                self.type == "device" and implied != "device"
            ):
                raise ValueError(
                    f"type: {self.type} does not fit url {redact_url(self.url)} "
                    f"(it looks like {implied})"
                )
        if self.loop and self.type not in ("file", "folder"):
            raise ValueError(f"loop: only files and folders can loop, not a {self.type} camera")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s is below reconnect_min_s")
        for name in self.zones:
            if not name.strip():
                raise ValueError("zones: a zone needs a name")
        return self

    @property
    def camera_type(self) -> CameraType:
        """The resolved type (the validator always fills it)."""
        assert self.type is not None
        return self.type

    @property
    def finite(self) -> bool:
        """Files and folders end; cameras and streams do not."""
        return self.camera_type in ("file", "folder")

    @property
    def display_url(self) -> str:
        """Where the frames come from, safe to show."""
        if self.device is not None:
            return f"/dev/video{self.device}"
        return redact_url(self.url or "")


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


# -- readers ----------------------------------------------------------------------------------


class CameraError(Exception):
    """A camera cannot be opened or read; ``permanent`` when retrying will not help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class _Reader(ABC):
    """One open connection to a camera. ``grab`` is cheap; ``retrieve`` decodes."""

    native_fps: float | None = None

    @abstractmethod
    def grab(self) -> bool:
        """Advance to the next frame; False at the end of a file or when the stream failed."""

    @abstractmethod
    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        """Decode the grabbed frame (BGR), or None when it cannot be decoded."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the connection (from the reader's own thread)."""

    def interrupt(self) -> None:  # noqa: B027 - optional hook: most readers never block long
        """Unblock a ``grab`` waiting on the network (from another thread)."""

    def failure(self) -> str:
        """Why the last ``grab`` failed, for the status detail."""
        return "no more frames"


class _OpenCvReader(_Reader):
    """Devices, RTSP, FFmpeg streams and video files through ``cv2.VideoCapture``."""

    def __init__(self, config: CameraConfig) -> None:
        import cv2

        kind = config.camera_type
        timeout_ms = int(config.timeout_s * 1000)
        params: list[int] = []
        target: str | int
        if kind == "device":
            target = config.device if config.device is not None else (config.url or "")
            api = cv2.CAP_V4L2
        elif kind == "file":
            target = str(Path(config.url or "").expanduser())
            if not Path(target).is_file():
                raise CameraError(f"file {target} not found", permanent=True)
            api = cv2.CAP_ANY
        else:
            target = config.url or ""
            api = cv2.CAP_FFMPEG
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        self._cap = (cv2.VideoCapture(target, api, params) if params
                     else cv2.VideoCapture(target, api))
        if not self._cap.isOpened():
            self._cap.release()
            what = {"device": "device", "file": "file"}.get(kind, "stream")
            raise CameraError(
                f"cannot open {what} {config.display_url}"
                + (" (not a video OpenCV can decode)" if kind == "file" else ""),
                permanent=kind == "file",
            )
        if kind == "device":
            # Fewer driver buffers: the frame we grab is closer to now.
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.native_fps = fps if 0.5 <= fps <= 240 else None

    def grab(self) -> bool:
        return bool(self._cap.grab())

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        ok, image = self._cap.retrieve()
        if not ok or image is None or not image.size:
            return None
        return np.asarray(image, dtype=np.uint8)

    def close(self) -> None:
        self._cap.release()

    def failure(self) -> str:
        return "no frame (the stream ended, or nothing came within timeout_s)"


class _FolderReader(_Reader):
    """The images of a folder in name order, one frame each."""

    def __init__(self, config: CameraConfig) -> None:
        folder = Path(config.url or "").expanduser()
        if not folder.is_dir():
            raise CameraError(f"folder {folder} not found", permanent=True)
        self._files = sorted(p for p in folder.iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self._files:
            raise CameraError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})",
                              permanent=True)
        self._index = -1
        self.native_fps = config.fps or 1.0

    def grab(self) -> bool:
        self._index += 1
        return self._index < len(self._files)

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        import cv2

        path = self._files[self._index]
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("cannot read image %s; skipping it", path)
            return None
        return np.asarray(image, dtype=np.uint8)


class _MjpegReader(_Reader):
    """HTTP(S) ``multipart/x-mixed-replace`` JPEG streams, or a JPEG snapshot URL polled.

    Read natively rather than through FFmpeg: it starts on the first frame instead of
    probing the stream for seconds, honours our timeouts, and a server going away is
    noticed at once. Credentials in the URL are sent as HTTP Basic authentication.
    """

    def __init__(self, config: CameraConfig, stop: threading.Event) -> None:
        url = config.url or ""
        self._display = config.display_url
        self._timeout = config.timeout_s
        self._verify = config.verify_tls
        self._stop = stop
        self._period = 1.0 / config.fps if config.fps else 0.2
        parts = urlsplit(url)
        if not parts.hostname:
            raise CameraError(f"cannot open {self._display}: no host in the URL", permanent=True)
        self._https = parts.scheme.lower() == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"User-Agent": "edge-agent", "Accept": "multipart/x-mixed-replace, image/*"}
        if parts.username is not None:
            token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(token).decode("ascii")
        self._conn: http.client.HTTPConnection | None = None
        self._response: http.client.HTTPResponse | None = None
        self._boundary: bytes | None = None
        self._pending_boundary = False
        self._jpeg: bytes | None = None
        self._failure = "no more frames"
        self._snapshot_body: bytes | None = None
        self._last_poll = 0.0
        self._connect()

    def _connect(self) -> None:
        try:
            conn: http.client.HTTPConnection
            if self._https:
                context = ssl.create_default_context()
                if not self._verify:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                   context=context)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._conn = conn
            conn.request("GET", self._path, headers=self._headers)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise CameraError(f"cannot open {self._display}: {_describe(exc)}") from None
        if response.status != 200:
            self.close()
            hint = " (check the credentials)" if response.status in (401, 403) else ""
            raise CameraError(
                f"cannot open {self._display}: HTTP {response.status} {response.reason}{hint}"
            )
        ctype = response.getheader("Content-Type", "") or ""
        self._response = response
        if ctype.lower().startswith("multipart/"):
            match = re.search(r'boundary="?([^";]+)"?', ctype, re.IGNORECASE)
            if not match:
                self.close()
                raise CameraError(f"cannot open {self._display}: multipart stream without a "
                                  "boundary")
            self._boundary = match.group(1).strip().encode("latin-1")
            if self._boundary.startswith(b"--"):
                self._boundary = self._boundary[2:]
        elif ctype.lower().startswith("image/"):
            self._snapshot_body = response.read()
            self.close_connection()
        else:
            self.close()
            raise CameraError(f"cannot open {self._display}: not an MJPEG stream or JPEG image "
                              f"(Content-Type {ctype or 'missing'})")

    def _readline(self) -> bytes:
        assert self._response is not None
        line = self._response.readline(65536)
        if not line:
            raise EOFError("the server closed the stream")
        return line

    def _next_part(self) -> bytes:
        assert self._boundary is not None and self._response is not None
        marker = b"--" + self._boundary
        if not self._pending_boundary:
            while True:
                line = self._readline().strip()
                if line.startswith(marker):
                    if line == marker + b"--":
                        raise EOFError("the server ended the stream")
                    break
        self._pending_boundary = False
        length: int | None = None
        while True:
            line = self._readline().strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                try:
                    length = int(value.strip())
                except ValueError:
                    length = None
        if length is not None:
            data = self._response.read(length)
            if len(data) < length:
                raise EOFError("the server closed the stream mid-frame")
            return data
        # No Content-Length: the part runs until the next boundary line.
        chunks: list[bytes] = []
        while True:
            line = self._readline()
            if line.strip().startswith(marker):
                self._pending_boundary = True
                break
            chunks.append(line)
        return b"".join(chunks).rstrip(b"\r\n")

    def grab(self) -> bool:
        try:
            if self._snapshot_body is not None:
                return self._poll_snapshot()
            self._jpeg = self._next_part()
            return True
        except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:
            self._failure = _describe(exc)
            return False

    def _poll_snapshot(self) -> bool:
        if self._jpeg is not None:
            # A snapshot URL is polled at the fps cap, not hammered.
            delay = self._last_poll + self._period - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                self._failure = "stopped"
                return False
            try:
                self._connect()
            except CameraError as exc:
                self._failure = str(exc)
                return False
        self._last_poll = time.monotonic()
        self._jpeg, self._snapshot_body = self._snapshot_body, b""
        return bool(self._jpeg)

    def retrieve(self) -> npt.NDArray[np.uint8] | None:
        if not self._jpeg:
            return None
        import cv2

        image = cv2.imdecode(np.frombuffer(self._jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
        return np.asarray(image, dtype=np.uint8) if image is not None else None

    def failure(self) -> str:
        return self._failure

    def close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._response = None

    def close(self) -> None:
        self.close_connection()
        self._conn = None

    def interrupt(self) -> None:
        conn = self._conn
        sock = getattr(conn, "sock", None) if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _describe(exc: BaseException) -> str:
    """A short human reason for a network error ("connection refused", "timed out")."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


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
        self._reader: _Reader | None = None
        self._decimator = _Decimator(config.fps)
        self.finished = threading.Event()
        self.frames_grabbed = 0
        self.frames_delivered = 0
        self.frames_dropped = 0
        self.decode_errors = 0
        self.grab_rate = RateMeter()
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
            self.tracker.set(SourceState.ERROR, _scrub(f"capture failed: {exc}", self.config.url))
        finally:
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _open(self) -> _Reader:
        kind = self.config.camera_type
        if kind == "mjpeg":
            return _MjpegReader(self.config, self._stop)
        if kind == "folder":
            return _FolderReader(self.config)
        return _OpenCvReader(self.config)

    def _run(self) -> None:
        config = self.config
        backoff = config.reconnect_min_s
        timeline = 0.0  # files: where the next pass starts on the camera's timeline
        wall_origin = self._clock.time()
        last_reason: str | None = None
        while not self._stop.is_set():
            try:
                reader = self._open()
            except CameraError as exc:
                reason = _scrub(str(exc), config.url)
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
                if config.loop:
                    continue
                logger.info("%s: end of %s after %d frames", self.name, config.display_url,
                            self.frames_grabbed)
                self.tracker.set(SourceState.ENDED, f"end of {config.display_url}")
                return
            reason = _scrub(f"stream from {config.display_url} stopped: {outcome}", config.url)
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

    def _pump(self, reader: _Reader, timeline: float,
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
