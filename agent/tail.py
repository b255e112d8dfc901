"""``edge-agent tail``: watch what the agent publishes, in lines a person can read."""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import threading
import time
import uuid
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from agent.config import AgentConfig, read_mqtt_password
from agent.mqtt.link import describe_connect_error, paho_client


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


class MediaDirError(Exception):
    """The ``--save-media`` folder cannot be created or written."""


_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "audio/wav": "wav"}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
PENDING_MEDIA = 64
"""Media that arrived on their own topic and wait for their event (it follows at once)."""


class MediaSaver:
    """Writes each event's images and clips under one folder, named after the printed line.

    A file is ``HHMMSS-{source}-{label}-{phase}-{id8}-{role}.{ext}``: the time and the ``id``
    are the ones on the event's line, so a person finds the picture of a line at a glance.
    Media sent inline (base64 in the event) and media sent on their own topic (which arrive
    just before their event) end up with the same names.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-test-{uuid.uuid4().hex[:8]}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise MediaDirError(f"cannot write media under {root}: {reason}") from exc
        self.saved = 0
        self.failed: str | None = None
        self._pending: OrderedDict[str, bytes] = OrderedDict()

    def hold(self, topic_rel: str, payload: bytes) -> None:
        """Keep bytes from ``media/...`` until the event naming that topic arrives."""
        self._pending[topic_rel] = payload
        while len(self._pending) > PENDING_MEDIA:
            self._pending.popitem(last=False)

    def save_event(self, clock: str, source: str, event: dict[str, Any]) -> list[str]:
        """Write the event's media; return the file names written."""
        if self.failed:
            return []
        media = [*(event.get("images") or []), *([event["audio"]] if event.get("audio") else [])]
        label = (event.get("label") or {}).get("id") or event.get("kind") or "event"
        stem = "-".join(_UNSAFE.sub("_", str(part)) for part in (
            clock.replace(":", ""), source, label, event.get("phase") or event.get("kind"),
            str(event.get("id", ""))[:8]) if part)
        names: list[str] = []
        for item in media:
            blob = self._blob(item)
            if blob is None:
                continue
            ext = _EXTENSIONS.get(item.get("content_type", ""), "bin")
            name = f"{stem}-{_UNSAFE.sub('_', str(item.get('role', 'media')))}.{ext}"
            try:
                (self.root / name).write_bytes(blob)
            except OSError as exc:
                # Once: a full disk must not turn every following line into an error.
                self.failed = f"cannot write {self.root / name}: {exc.strerror or exc}"
                print(f"tail: {self.failed}; no more media are saved", file=sys.stderr)
                return names
            self.saved += 1
            names.append(name)
        return names

    def _blob(self, item: dict[str, Any]) -> bytes | None:
        if item.get("data"):
            try:
                return base64.b64decode(item["data"], validate=True)
            except (binascii.Error, ValueError):
                return None
        if item.get("topic"):
            return self._pending.pop(item["topic"], None)
        return None


def _event_line(source: str, e: dict[str, Any]) -> str:
    label = (e.get("label") or {}).get("id", "-")
    names = (e.get("label") or {}).get("name") or {}
    parts = [f"event  {source:<14} {e.get('kind', '?'):<9} {label}"]
    if names.get("ko") and names.get("ko") != label:
        parts.append(f"({names['ko']})")
    if e.get("phase"):
        parts.append(e["phase"])
    obj, sound = e.get("object"), e.get("sound")
    if obj:
        parts.append(f"score {obj['score']:.2f}")
        if obj.get("current_zones"):
            parts.append(f"zones {','.join(obj['current_zones'])}")
    elif sound:
        parts.append(f"conf {sound['confidence']:.2f} level {sound['sound_level']:.0f} dBFS")
    elif e.get("predictions"):
        parts.append(f"conf {e['predictions'][0]['confidence']:.2f}")
    media = len(e.get("images") or []) + (1 if e.get("audio") else 0)
    if media:
        parts.append(f"+{media} media")
    seq = e.get("seq")
    if seq is not None:
        parts.append(f"seq {seq}")
    parts.append(f"id {str(e.get('id', ''))[:8]}")
    return " ".join(parts)


def format_message(rel: str, payload: bytes) -> str:
    """One readable line for a message on ``{prefix}/{device}/{rel}``."""
    if rel == "status":
        return f"status {payload.decode(errors='replace')}"
    if rel.startswith("media/"):
        return f"media  {rel[6:]} {len(payload) / 1024:.1f} KB"
    try:
        data = json.loads(payload)
    except ValueError:
        return f"{rel} {payload[:80]!r}"
    if rel.startswith("events/"):
        return _event_line(rel[7:], data)
    if rel.startswith("composite/"):
        return (f"composite {data['rule']['id']} {data.get('status')} "
                f"{data.get('event_count', len(data.get('events', [])))} events group "
                f"{data.get('group_key')} "
                f"id {data['id'][:8]}")
    if rel.startswith("sources/") and rel.endswith("/status"):
        detail = f" ({data['detail']})" if data.get("detail") else ""
        return f"source {data.get('source_id')} {data.get('state')}{detail}"
    if rel == "stats":
        ob = data.get("outbox", {})
        # Only the reasons that counted something: a row of zeros hides the one that did not.
        drops = {k: v for k, v in (data.get("drops") or {}).items() if v}
        dropped = ", ".join(f"{k} {v}" for k, v in drops.items()) or "none"
        return (f"stats  outbox {ob.get('depth')} queued, drops: {dropped}, "
                f"{len(data.get('sources', {}))} sources")
    return f"{rel} {json.dumps(data)[:120]}"


def tail(config: AgentConfig, raw: bool = False, count: int | None = None,
         timeout: float | None = None, out: TextIO = sys.stdout,
         save_media: Path | None = None) -> int:
    """Subscribe to the device's topics and print messages until interrupted.

    With ``save_media``, every event's images and clips are written under that folder and
    the event's line names the files. Exit 0, 1 when the broker cannot be reached, 2 when
    the folder cannot be written.
    """
    base = f"{config.mqtt.topic_prefix}/{config.device.id}"
    saver: MediaSaver | None = None
    if save_media is not None:
        try:
            saver = MediaSaver(save_media)
        except MediaDirError as exc:
            print(f"tail: --save-media: {exc}", file=sys.stderr)
            return 2
    seen = 0
    done = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None
                   ) -> None:
        if rc.is_failure:
            print(f"tail: broker refused: {rc}", file=sys.stderr)
            done.set()
            return
        client.subscribe(f"{base}/#", qos=1)
        print(f"{_clock()} watching {base}/# on {config.mqtt.host}:{config.mqtt.port}",
              file=out, flush=True)

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal seen
        rel = msg.topic[len(base) + 1:]
        now = _clock()
        if saver is not None and rel.startswith("media/"):
            saver.hold(rel, msg.payload)
        if raw:
            line = f"{msg.topic} {msg.payload.decode(errors='replace')}"
        else:
            line = f"{now} {format_message(rel, msg.payload)}"
            if msg.retain:
                line += " (retained)"
        if saver is not None and rel.startswith("events/"):
            names = _saved_media(saver, now, rel[7:], msg.payload)
            if names:
                line += f" -> {', '.join(names)}"
        print(line, file=out, flush=True)
        seen += 1
        if count is not None and seen >= count:
            done.set()

    client = paho_client(config.mqtt, f"edge-agent-tail-{uuid.uuid4().hex[:8]}",
                         read_mqtt_password(config.mqtt))
    client.on_connect = on_connect
    client.on_message = on_message
    try:
        client.connect(config.mqtt.host, config.mqtt.port, 30)
    except (OSError, ValueError) as exc:
        print(f"tail: cannot connect to {config.mqtt.host}:{config.mqtt.port}: "
              f"{describe_connect_error(exc)}", file=sys.stderr)
        return 1
    client.loop_start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not done.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            done.wait(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        client.loop_stop()
        client.disconnect()
    if saver is not None:
        print(f"{_clock()} saved {saver.saved} media files under {saver.root}", file=out,
              flush=True)
    return 0


def _saved_media(saver: MediaSaver, clock: str, source: str, payload: bytes) -> list[str]:
    try:
        event = json.loads(payload)
    except ValueError:
        return []
    return saver.save_event(clock, source, event) if isinstance(event, dict) else []
