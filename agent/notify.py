"""systemd's notify protocol (sd_notify), spoken directly over ``$NOTIFY_SOCKET``.

Implemented here because it is one datagram per message: no extra package on the board.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


class SystemdNotifier:
    """Sends READY=1, WATCHDOG=1, STATUS=..., STOPPING=1 when run under ``Type=notify``.

    Every method is a no-op when ``NOTIFY_SOCKET`` is not set (run by hand, tests).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        self.watchdog_interval: float | None = None
        if usec and (pid is None or pid == str(os.getpid())):
            try:
                self.watchdog_interval = int(usec) / 1_000_000
            except ValueError:
                logger.warning("WATCHDOG_USEC=%r is not a number; watchdog disabled", usec)
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if self._address.startswith("@"):  # abstract namespace
                self._address = "\0" + self._address[1:]

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> None:
        """Send one notification; failures are logged, never raised."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            logger.warning("sd_notify %s failed: %s", message.split("=")[0], exc)

    def ready(self) -> None:
        self.send("READY=1")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
