"""Logging for the journal: one line per message, no secrets.

Under systemd (``JOURNAL_STREAM`` set) the journal adds timestamps, so lines omit them.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable

_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s:]+(:[^/@\s]*)?@")
_QUERY_SECRETS = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|key|auth)=([^&\s]+)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide credentials inside URLs, secret-looking query parameters and known secrets."""
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    text = _QUERY_SECRETS.sub(r"\1=***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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
