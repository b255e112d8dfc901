"""Home Assistant MQTT discovery: the agent as one HA device, its sources and rules as entities.

Retained config messages on ``{discovery_prefix}/<component>/<node_id>/<object_id>/config``:

- ``sensor`` per source: its state (``starting``, ``running``, ``reconnecting``...) from the
  retained ``.../sources/{id}/status`` JSON;
- ``event`` per source: object and sound events, ``event_type`` = label id + ``_`` + phase
  (``person_new``, ``dog_bark_end``), ``snapshot`` for snapshots, the label id for synthetic
  events;
- ``event`` per rule: composite events, ``event_type`` = ``open`` or ``final``;
- ``image`` per camera with ``media.latest_snapshot``: its latest event picture, from the
  retained ``.../snapshots/{camera}``;
- ``sensor`` for a few stats figures (CPU, memory, temperature, outbox depth, free disk).

Every entity is available while ``.../status`` says ``online``; the agent's ``stopped`` (clean
stop) and ``offline`` (last will) both map to unavailable. Configs are announced at start, on
every reconnect, and again when HA says ``online`` on ``{discovery_prefix}/status`` (it lost
them when it restarted without a persistent broker). ``remove_discovery`` clears them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from agent import __version__
from agent.config import AgentConfig
from agent.media.latest import snapshot_topic
from agent.mqtt.link import Topics, paho_client
from agent.sources.base import SourceState
from agent.sources.camera import CameraConfig
from agent.sources.config import SyntheticConfig
from agent.sources.microphone import MicrophoneConfig

logger = logging.getLogger(__name__)

PHASES = ("new", "update", "end")

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")

# HA's template language is Jinja; these run inside HA, not here.
_AVAILABLE = "{{ 'online' if value == 'online' else 'offline' }}"
_EVENT_TEMPLATE = (
    "{% set p = value_json.get('phase') %}"
    "{% set l = value_json.label.id if value_json.get('label') else value_json.kind %}"
    "{% set t = value_json.kind if value_json.kind == 'snapshot' "
    "else (l ~ '_' ~ p if p else l) %}"
    "{{ {'event_type': t, 'event_id': value_json.id, 'track_id': value_json.get('track_id'),"
    " 'label': l} | tojson }}"
)
_COMPOSITE_TEMPLATE = (
    "{{ {'event_type': value_json.status, 'event_id': value_json.id,"
    " 'events': value_json.events | length} | tojson }}"
)


def object_id(text: str) -> str:
    """A topic level HA accepts as node or object id (letters, digits, ``_``, ``-``)."""
    return _UNSAFE.sub("_", text) or "_"


def node_id(config: AgentConfig) -> str:
    """This device's node id in discovery topics."""
    return config.homeassistant.node_id or object_id(config.device.id)


def event_types(source: Any) -> list[str]:
    """The ``event_type`` values a source's events can have in HA."""
    if isinstance(source, CameraConfig):
        labels = list(source.objects.track)
    elif isinstance(source, MicrophoneConfig):
        labels = list(source.listen)
    elif isinstance(source, SyntheticConfig):
        return list(dict.fromkeys(source.labels))
    else:
        labels = []
    types = [f"{label}_{phase}" for label in dict.fromkeys(labels) for phase in PHASES]
    if isinstance(source, CameraConfig):
        types.append("snapshot")
    return types


def discovery_messages(config: AgentConfig) -> dict[str, bytes]:
    """Every config message for the current configuration: topic -> retained JSON payload."""
    ha = config.homeassistant
    topics = Topics(config.mqtt.topic_prefix, config.device.id)
    node = node_id(config)
    device: dict[str, Any] = {
        "identifiers": [f"edge-agent_{node}"],
        "name": f"edge-agent {config.device.id}",
        "manufacturer": "edge-agent",
        "model": "edge-agent",
        "sw_version": __version__,
    }
    if config.device.location:
        device["suggested_area"] = config.device.location
    common: dict[str, Any] = {
        "device": device,
        "origin": {"name": "edge-agent", "sw_version": __version__},
        "availability": [{"topic": topics.status, "value_template": _AVAILABLE,
                          "payload_available": "online", "payload_not_available": "offline"}],
    }
    out: dict[str, bytes] = {}

    def add(component: str, obj: str, body: dict[str, Any]) -> None:
        oid = object_id(obj)
        body = {**body, "unique_id": f"{node}_{oid}", "object_id": f"{node}_{oid}", **common}
        out[f"{ha.discovery_prefix}/{component}/{node}/{oid}/config"] = json.dumps(
            body, sort_keys=True).encode()

    for source in config.all_sources():
        if not source.enabled:
            continue
        add("sensor", f"{source.id}_state", {
            "name": f"{source.display_name} state",
            "state_topic": topics.source_status(source.id),
            "value_template": "{{ value_json.state }}",
            "device_class": "enum",
            "options": [s.value for s in SourceState],
            "icon": "mdi:cctv" if isinstance(source, CameraConfig) else "mdi:microphone",
        })
        if isinstance(source, CameraConfig) and config.media.latest_snapshot:
            add("image", f"{source.id}_snapshot", {
                "name": f"{source.display_name} latest snapshot",
                "image_topic": topics.full(snapshot_topic(source.id)),
                "content_type": "image/jpeg",
            })
        types = event_types(source)
        if types:
            add("event", f"{source.id}_events", {
                "name": f"{source.display_name} events",
                "state_topic": topics.full(Topics.events(source.id)),
                "event_types": types,
                "value_template": _EVENT_TEMPLATE,
            })
    for rule in config.rules:
        add("event", f"rule_{rule.id}", {
            "name": f"rule {rule.name or rule.id}",
            "state_topic": topics.full(Topics.composite(rule.id)),
            "event_types": ["open", "final"],
            "value_template": _COMPOSITE_TEMPLATE,
        })
    # Stats arrive every stats.interval: three missed ones make the figures unavailable.
    expire = max(int(config.stats.interval * 3), 60)
    for key, name, unit, device_class, template in (
        ("cpu", "CPU", "%", None, "{{ value_json.system.cpu_percent }}"),
        ("memory", "memory", "MB", None,
         "{{ (value_json.system.rss_bytes / 1048576) | round(1) "
         "if value_json.system.rss_bytes is not none else None }}"),
        ("temperature", "SoC temperature", "°C", "temperature",
         "{{ value_json.system.temperature_c }}"),
        ("disk_free", "disk free", "GB", None,
         "{{ (value_json.system.disk_free_bytes / 1e9) | round(2) "
         "if value_json.system.disk_free_bytes is not none else None }}"),
        ("outbox_depth", "outbox depth", "events", None, "{{ value_json.outbox.depth }}"),
    ):
        body: dict[str, Any] = {
            "name": name, "state_topic": topics.stats, "value_template": template,
            "unit_of_measurement": unit, "state_class": "measurement",
            "entity_category": "diagnostic", "expire_after": expire,
        }
        if device_class:
            body["device_class"] = device_class
        add("sensor", f"agent_{key}", body)
    return out


class DiscoveryAnnouncer:
    """Keeps HA's view of this device current through the MQTT link.

    ``set_retained(topic, payload)`` is ``MqttLink.set_retained``: the link publishes it now
    and again after every reconnect. Entities that disappear (a source removed on reload) are
    cleared with an empty retained payload.
    """

    def __init__(self, config: AgentConfig, set_retained: Callable[[str, bytes], None]) -> None:
        self._set_retained = set_retained
        self._lock = threading.Lock()
        self._config = config
        self._announced: dict[str, bytes] = {}

    @property
    def ha_status_topic(self) -> str:
        """HA's own availability topic: ``online`` when it (re)starts."""
        return f"{self._config.homeassistant.discovery_prefix}/status"

    def announce(self, config: AgentConfig | None = None) -> int:
        """Publish every config message (for ``config`` when given); returns how many."""
        with self._lock:
            if config is not None:
                self._config = config
            messages = discovery_messages(self._config) if self._config.homeassistant.enabled \
                else {}
            for topic in self._announced.keys() - messages.keys():
                self._set_retained(topic, b"")
            for topic, payload in messages.items():
                self._set_retained(topic, payload)
            self._announced = messages
        logger.info("homeassistant: announced %d entities under %s", len(messages),
                    self._config.homeassistant.discovery_prefix)
        return len(messages)

    def on_ha_status(self, topic: str, payload: bytes) -> None:
        """Subscription callback for ``ha_status_topic`` (runs on the network thread)."""
        if payload.strip() == b"online":
            self.announce()


def _connect(config: AgentConfig, password: str | None, timeout: float) -> mqtt.Client:
    cfg = config.mqtt
    base = cfg.client_id or f"edge-agent-{config.device.id}"
    # Its own client id: reusing the agent's would disconnect a running agent.
    client = paho_client(cfg, f"{base}-ha-remove", password)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                   props: Any = None) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        connected.set()

    client.on_connect = on_connect
    client.connect(cfg.host, cfg.port, cfg.keepalive)
    client.loop_start()
    if not connected.wait(timeout) or refused:
        client.loop_stop()
        why = refused[0] if refused else f"no answer within {timeout:.0f} s"
        raise ConnectionError(f"cannot connect to {cfg.host}:{cfg.port}: {why}")
    return client


def remove_discovery(config: AgentConfig, password: str | None = None,
                     timeout: float = 10.0, settle: float = 1.0) -> list[str]:
    """Remove this device from HA: empty retained payloads on every config topic it has.

    Clears the topics the current config announces and any other retained config under this
    node id found on the broker (e.g. of a source removed since). Returns the topics cleared.
    Raises ``ConnectionError`` when the broker cannot be reached.
    """
    node = node_id(config)
    prefix = config.homeassistant.discovery_prefix
    found: set[str] = set(discovery_messages(config))
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain and message.payload:
            with lock:
                found.add(message.topic)

    client = _connect(config, password, timeout)
    try:
        client.on_message = on_message
        client.subscribe(f"{prefix}/+/{node}/+/config", qos=1)
        time.sleep(settle)  # retained messages arrive right after the subscription
        with lock:
            topics = sorted(found)
        infos = [client.publish(t, b"", qos=1, retain=True) for t in topics]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        client.disconnect()
    finally:
        client.loop_stop()
    logger.info("homeassistant: removed %d discovery configs of node %s", len(topics), node)
    return topics
