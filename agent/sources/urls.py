"""Credentials out of camera URLs: what is logged or shown never holds a password or token."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

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


def scrub(text: str, url: str | None) -> str:
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
