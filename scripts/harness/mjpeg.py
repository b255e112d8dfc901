"""A small MJPEG-over-HTTP server on 127.0.0.1 for camera tests: start, stop, restart.

It serves ``multipart/x-mixed-replace`` JPEG frames at a fixed rate (like an IP camera's
``/video`` URL) and a single JPEG at ``/snapshot.jpg``. ``stop`` closes the listening socket
and every open stream, as a camera rebooting would; ``start`` listens again on the same port.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import numpy.typing as npt

BOUNDARY = "frameboundary"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MjpegServer:
    """Serves ``frames`` in a loop at ``fps``; ``auth`` = "user:pass" requires Basic auth."""

    def __init__(
        self,
        frames: Sequence[npt.NDArray[np.uint8]],
        fps: float = 20.0,
        port: int | None = None,
        auth: str | None = None,
        content_length: bool = True,
    ) -> None:
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port or free_port()
        self.auth = auth
        self.content_length = content_length
        self.requests = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def url(self, path: str = "/video", credentials: str | None = None) -> str:
        cred = f"{credentials}@" if credentials else ""
        return f"http://{cred}127.0.0.1:{self.port}{path}"

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                if outer.auth is not None:
                    want = "Basic " + base64.b64encode(outer.auth.encode()).decode()
                    if self.headers.get("Authorization") != want:
                        self.send_response(401)
                        self.send_header("WWW-Authenticate", 'Basic realm="cam"')
                        self.end_headers()
                        return
                if self.path.startswith("/snapshot"):
                    blob = outer.jpegs[0]
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(blob)))
                    self.end_headers()
                    self.wfile.write(blob)
                    return
                self.send_response(200)
                self.send_header("Content-Type",
                                 f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                i = 0
                try:
                    while not outer._closing.is_set():
                        blob = outer.jpegs[i % len(outer.jpegs)]
                        head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        if outer.content_length:
                            head += f"Content-Length: {len(blob)}\r\n"
                        self.wfile.write(head.encode() + b"\r\n" + blob + b"\r\n")
                        i += 1
                        time.sleep(1.0 / outer.fps)
                except OSError:
                    return

        self._closing.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="mjpeg-server",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket and end every stream."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
        # Let handler threads notice and close their connections.
        time.sleep(0.2)
