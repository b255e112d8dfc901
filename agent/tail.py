"""``edge-agent tail``: watch what the agent publishes, in lines a person can read."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from datetime import datetime
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from agent.config import AgentConfig, read_mqtt_password
from agent.mqtt.link import describe_connect_error, paho_client


def _clock() -> str:
    return datetime.now().strftime("%H:%M:%S")


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
        return (f"stats  outbox {ob.get('depth')} queued, drops {data.get('drops') or {}}, "
                f"{len(data.get('sources', {}))} sources")
    return f"{rel} {json.dumps(data)[:120]}"


def tail(config: AgentConfig, raw: bool = False, count: int | None = None,
         timeout: float | None = None, out: TextIO = sys.stdout) -> int:
    """Subscribe to the device's topics and print messages until interrupted."""
    base = f"{config.mqtt.topic_prefix}/{config.device.id}"
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
        if raw:
            line = f"{msg.topic} {msg.payload.decode(errors='replace')}"
        else:
            line = f"{_clock()} {format_message(rel, msg.payload)}"
            if msg.retain:
                line += " (retained)"
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
    return 0
