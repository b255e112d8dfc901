"""HTTP(S) MJPEG cameras: ``multipart/x-mixed-replace`` streams and JPEG snapshot URLs.

Read natively rather than through FFmpeg (see ``MjpegReader``); the capture thread in
``agent.sources.camera`` drives it like every other reader.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import re
import socket
import ssl
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np
import numpy.typing as npt

from agent.sources.reader import CameraError, FrameReader

if TYPE_CHECKING:
    from agent.sources.config import CameraConfig


class MjpegReader(FrameReader):
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
