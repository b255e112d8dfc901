"""Identifiers that become MQTT topic levels (source ids, rule ids)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator

_TOPIC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_topic_id(value: str) -> str:
    """Accept 1-64 letters, digits, ``_``, ``.``, ``-``: safe as one topic level, no wildcards."""
    if not _TOPIC_ID.match(value):
        raise ValueError(
            "must be 1-64 characters of letters, digits, '_', '.', '-' (it is a topic level)"
        )
    return value


TopicId = Annotated[str, AfterValidator(check_topic_id)]
