"""Outbox stage: a durable, bounded disk queue between event producers and MQTT delivery."""

from __future__ import annotations

from agent.outbox.config import OutboxConfig
from agent.outbox.store import (
    DROP_REASONS,
    Outbox,
    OutboxError,
    OutboxMessage,
    OutboxStats,
    strip_inline_media,
)

__all__ = [
    "DROP_REASONS",
    "Outbox",
    "OutboxConfig",
    "OutboxError",
    "OutboxMessage",
    "OutboxStats",
    "strip_inline_media",
]
