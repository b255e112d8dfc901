"""Logging for the journal: one line per message, no secrets.

Under systemd (``JOURNAL_STREAM`` set) the journal adds timestamps, so lines omit them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@")
# The value runs to the next ``&``, blank, quote or ``#``; punctuation that ends a sentence
# (``...?token=abc: connection refused``) is left to the sentence, not hidden as the value.
_QUERY_SECRETS = re.compile(
    r"(?i)\b(password|passwd|pwd|token|secret|key|auth)=([^&\s\"'#<>]+?)"
    r"(?=[:;,.)\]]*(?:[&\s\"'#<>]|$))"
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide credentials inside URLs, secret-looking query parameters and known secrets."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _QUERY_SECRETS.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


_HEX = re.compile(r"0x[0-9a-fA-F]+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _line_key(line: str) -> str:
    """What makes two lines "the same message": addresses and numbers do not count, except
    three-digit status codes (401 and 404 are different failures)."""
    line = _HEX.sub("0x?", line)
    return _NUMBER.sub(lambda m: m[0] if len(m[0]) == 3 and m[0][0] in "45" else "#", line)


class LineDeduplicator:
    """The agent's "same failure logged once" rule for lines it did not write itself.

    A child's stderr and native libraries repeat the same message on every retry; ``check``
    says whether a line is the first of its kind within ``window_s`` (and how many repeats
    were held back since it was last shown). Lines differing only in numbers or addresses
    are the same kind. Thread-safe; remembers at most ``max_keys`` kinds.
    """

    def __init__(self, window_s: float = 600.0, max_keys: int = 512,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, list[float]] = OrderedDict()  # key -> [shown_at, repeats]

    def check(self, line: str) -> tuple[bool, int]:
        """(show it, repeats held back since it was last shown)."""
        key = _line_key(line)
        now = self._clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window_s:
                entry[1] += 1
                self._seen.move_to_end(key)
                return False, 0
            repeats = int(entry[1]) if entry is not None else 0
            self._seen[key] = [now, 0]
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)
            return True, repeats


class RedactingFilter(logging.Filter):
    """Rewrites every record so that no configured secret reaches a handler."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info),
                                     self.secrets)
            record.exc_info = None
        if clean != message:
            record.msg, record.args = clean, None
        return True


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for the process."""
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = "%(levelname)s %(name)s [%(threadName)s] %(message)s"
    if not under_journal:
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("paho").setLevel(logging.WARNING)
