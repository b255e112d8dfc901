"""The latest image of each camera (and of each label on it), retained, for dashboards.

``media.latest_snapshot: true``: every camera event with images replaces the retained
message on ``snapshots/{camera}`` and ``snapshots/{camera}/{label}`` with its picture (the
annotated one when there is one), so a dashboard, or Home Assistant's MQTT ``image`` entity,
shows the last detection as soon as it subscribes. Off by default: on a metered link it costs
a picture per event.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable

from agent.events.schema import Event, Media

logger = logging.getLogger(__name__)

PREFERRED_ROLES = ("annotated", "input")


def snapshot_topic(source_id: str, label_id: str | None = None) -> str:
    """Relative topic of a camera's latest image (of one label, when given)."""
    return f"snapshots/{source_id}" + (f"/{label_id}" if label_id else "")


def pick_image(event: Event) -> Media | None:
    """The image a dashboard shows for the event: annotated, else input, else the first."""
    images = [m for m in event.images if m.data is not None]
    for role in PREFERRED_ROLES:
        for media in images:
            if media.role == role:
                return media
    return images[0] if images else None


class LatestSnapshots:
    """Publishes each camera's latest image with ``set_retained(full_topic, bytes)``.

    ``set_retained`` is ``MqttLink.set_retained``: the newest image per topic is published
    again after a reconnect.
    """

    def __init__(self, base_topic: str, set_retained: Callable[[str, bytes], None]) -> None:
        self._base = base_topic
        self._set_retained = set_retained
        self.published = 0

    def on_event(self, event: Event) -> None:
        """Take one accepted event (any thread); only camera events with images count."""
        if event.source.kind != "camera":
            return
        media = pick_image(event)
        if media is None:
            return
        try:
            data = base64.b64decode(media.data or "", validate=True)
        except (binascii.Error, ValueError) as exc:
            logger.warning("latest snapshot of %s: event %s has an invalid image (%s); "
                           "keeping the previous one", event.source.id, event.id, exc)
            return
        self._set_retained(f"{self._base}/{snapshot_topic(event.source.id)}", data)
        if event.label is not None:
            self._set_retained(
                f"{self._base}/{snapshot_topic(event.source.id, event.label.id)}", data)
        self.published += 1
