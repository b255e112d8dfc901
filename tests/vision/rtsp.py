"""A loopback RTSP responder that refuses every DESCRIBE: a camera with a wrong password.

Not a media server: it answers OPTIONS, and DESCRIBE with ``401 Unauthorized`` (or any
status given), which is all a client sees of a camera whose credentials are wrong or whose
path does not exist. Threads, one per connection; ``stop`` closes everything.
"""

from __future__ import annotations

import socket
import threading


class RtspResponder:
    """Answers RTSP requests on 127.0.0.1 with ``status`` for DESCRIBE."""

    def __init__(self, status: int = 401, reason: str = "Unauthorized") -> None:
        self.status = status
        self.reason = reason
        self.describes = 0
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="rtsp-responder", daemon=True)
        self._thread.start()

    def url(self, path: str = "stream1", credentials: str = "viewer:wrong") -> str:
        return f"rtsp://{credentials}@127.0.0.1:{self.port}/{path}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            conn.settimeout(5)
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.decode("latin-1").split("\r\n")
                    method = lines[0].split(" ", 1)[0]
                    cseq = next((ln.split(":", 1)[1].strip() for ln in lines
                                 if ln.lower().startswith("cseq:")), "1")
                    if method == "OPTIONS":
                        reply = (f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n"
                                 "Public: OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN\r\n\r\n")
                    elif method == "DESCRIBE":
                        self.describes += 1
                        auth = ('WWW-Authenticate: Basic realm="camera"\r\n'
                                if self.status == 401 else "")
                        reply = (f"RTSP/1.0 {self.status} {self.reason}\r\nCSeq: {cseq}\r\n"
                                 f"{auth}\r\n")
                    else:
                        reply = f"RTSP/1.0 405 Method Not Allowed\r\nCSeq: {cseq}\r\n\r\n"
                    try:
                        conn.sendall(reply.encode("latin-1"))
                    except OSError:
                        return

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        self._thread.join(2)
