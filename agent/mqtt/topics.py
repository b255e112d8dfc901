"""MQTT topic names under ``{prefix}/{device_id}``."""

from __future__ import annotations


class Topics:
    """Topic names under ``{prefix}/{device_id}``."""

    def __init__(self, prefix: str, device_id: str) -> None:
        self.base = f"{prefix}/{device_id}"

    def full(self, relative: str) -> str:
        return f"{self.base}/{relative}"

    @property
    def status(self) -> str:
        return self.full("status")

    @property
    def stats(self) -> str:
        return self.full("stats")

    def source_status(self, source_id: str) -> str:
        return self.full(f"sources/{source_id}/status")

    @staticmethod
    def events(source_id: str) -> str:
        """Relative topic of a source's events."""
        return f"events/{source_id}"

    @staticmethod
    def composite(rule_id: str) -> str:
        return f"composite/{rule_id}"

    @staticmethod
    def media(source_id: str, event_id: str, role: str) -> str:
        return f"media/{source_id}/{event_id}/{role}"
