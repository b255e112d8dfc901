"""``edge-agent media get``: fetch an event's images and clips from a running agent over MQTT.

Sends ``set/media/get`` and waits for the answer. Under MQTT 5 it names its own response
topic and correlation data (the bytes and the JSON answer arrive there); under MQTT 3.1.1 it
follows the ``result/`` convention: bytes on ``result/media/get/{event_id}/{role}``, then the
JSON answer on ``result/media/get`` with the request id it sent.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import AgentConfig, read_mqtt_password
from agent.mqtt.link import describe_connect_error, paho_client

EX_UNAVAILABLE = 69
"""sysexits.h: the broker cannot be reached, or no answer came in time."""

EX_NOINPUT = 66
"""sysexits.h: the agent answered that it has no such media."""

EX_DATAERR = 65
"""sysexits.h: bytes arrived whose sha256 differs from what the agent announced."""

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "audio/wav": "wav",
               "audio/x-wav": "wav"}


@dataclass
class _Answer:
    blobs: dict[str, bytes] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    done: threading.Event = field(default_factory=threading.Event)


def media_get(config: AgentConfig, event_id: str, role: str | None, out_dir: Path,
              timeout: float = 20.0, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """Fetch and write the media; returns the exit code (0, or one of the ``EX_*``)."""
    import sys

    out = out or sys.stdout
    err = err or sys.stderr
    base = f"{config.mqtt.topic_prefix}/{config.device.id}"
    v5 = config.mqtt.protocol == "5"
    token = uuid.uuid4().hex[:12]
    request_topic = f"{base}/set/media/get"
    if v5:
        reply_topic = f"{base}/result/media/get/cli-{token}"
        filters = [reply_topic]
    else:
        reply_topic = f"{base}/result/media/get"
        filters = [reply_topic, f"{reply_topic}/{event_id}/#"]
    answer = _Answer()
    subscribed = threading.Event()

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                   props: Any = None) -> None:
        if rc.is_failure:
            print(f"media get: broker refused: {rc}", file=err)
            answer.done.set()
            return
        client.subscribe([(f, 1) for f in filters])

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, codes: Any,
                     props: Any = None) -> None:
        subscribed.set()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        props = getattr(msg, "properties", None)
        if v5:
            if getattr(props, "CorrelationData", None) != token.encode():
                return
            if getattr(props, "ContentType", None) == "application/json":
                _take_result(msg.payload, answer)
            else:
                user = dict(getattr(props, "UserProperty", []) or [])
                answer.blobs[str(user.get("role", "?"))] = msg.payload
            return
        if msg.topic == reply_topic:
            try:
                body = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(body, dict) and body.get("request_id") == token:
                _take_result(msg.payload, answer)
        else:
            answer.blobs[msg.topic.rsplit("/", 1)[-1]] = msg.payload

    client = paho_client(config.mqtt, f"edge-agent-media-{token}",
                         read_mqtt_password(config.mqtt))
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(config.mqtt.host, config.mqtt.port, 30)
    except (OSError, ValueError) as exc:
        print(f"media get: cannot connect to {config.mqtt.host}:{config.mqtt.port}: "
              f"{describe_connect_error(exc)}", file=err)
        return EX_UNAVAILABLE
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            print(f"media get: no subscription acknowledgement from "
                  f"{config.mqtt.host}:{config.mqtt.port} within {timeout:g} s", file=err)
            return EX_UNAVAILABLE
        request: dict[str, Any] = {"event_id": event_id, "request_id": token}
        if role is not None:
            request["role"] = role
        props: Properties | None = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply_topic
            props.CorrelationData = token.encode()
        client.publish(request_topic, json.dumps(request).encode(), qos=1, properties=props)
        if not answer.done.wait(timeout):
            print(f"media get: no answer on {reply_topic} within {timeout:g} s (is the agent "
                  f"running with commands enabled, device {config.device.id}?)", file=err)
            return EX_UNAVAILABLE
    finally:
        client.loop_stop()
        client.disconnect()
    return _write(answer, event_id, out_dir, out, err)


def _take_result(payload: bytes, answer: _Answer) -> None:
    try:
        body = json.loads(payload)
    except ValueError:
        return
    if isinstance(body, dict):
        answer.result = body
        answer.done.set()


def _write(answer: _Answer, event_id: str, out_dir: Path, out: TextIO, err: TextIO) -> int:
    body = answer.result or {}
    if not body.get("ok"):
        print(f"media get: the agent says: {body.get('error') or 'no answer'}", file=err)
        return EX_NOINPUT
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"media get: -o {out_dir}: cannot create: {exc.strerror}", file=err)
        return 73  # EX_CANTCREAT
    code = 0
    for info in (body.get("result") or {}).get("media", []):
        role = str(info.get("role"))
        data = answer.blobs.get(role)
        if data is None:
            print(f"media get: {role}: announced but its bytes did not arrive", file=err)
            code = EX_DATAERR
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != info.get("sha256"):
            print(f"media get: {role}: sha256 {digest} differs from the announced "
                  f"{info.get('sha256')}; not written", file=err)
            code = EX_DATAERR
            continue
        ext = _EXTENSIONS.get(str(info.get("content_type")), "bin")
        path = out_dir / f"{event_id}-{role}.{ext}"
        try:
            path.write_bytes(data)
        except OSError as exc:
            print(f"media get: {path}: cannot write: {exc.strerror}", file=err)
            return 73
        size = f"{info.get('width')}x{info.get('height')} " if info.get("width") else ""
        print(f"{path} {role} {info.get('content_type')} {size}{len(data)} bytes, sha256 ok",
              file=out)
    return code
