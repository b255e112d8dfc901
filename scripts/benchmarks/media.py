"""Media: the store's size on disk against media.max_bytes, and the bytes a demo sends per hour
with each mqtt.media_transport.

    .venv/bin/python scripts/bench.py --only media [--quick]

Store: twice the bound of 50 KB images written into a ``MediaStore``; its files (table, WAL,
shm, value files) are then measured, apparent and allocated, beside ``max_bytes``; its write
rate beside writing the same bytes as plain files.

Transport: ``config/demo.yaml`` (camera, microphone, synthetic door sensor, rules) runs against
a local mosquitto for a while with each transport; a subscriber to the device's topics counts
topic and payload bytes of every message from the first event on, and the count is
extrapolated to an hour (so a figure is "per hour at the demo's pace", not a measured hour).
With ``request`` nobody asks for media: that is the point of it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.events.schema import DeviceRef, Event, Media, SourceRef
from agent.media.store import MediaStore
from scripts.benchmarks import Row

SECTION = "media"
REPO = Path(__file__).resolve().parents[2]
IMAGE_BYTES = 50 * 1024


def _event(seed: int) -> Event:
    data = os.urandom(IMAGE_BYTES)
    media = Media(role="input", content_type="image/jpeg", bytes=len(data),
                  sha256=hashlib.sha256(data).hexdigest(),
                  data=base64.b64encode(data).decode(), width=640, height=480)
    return Event(kind="snapshot", use_case="default", timestamp=datetime.now(timezone.utc),
                 device=DeviceRef(id="bench"), source=SourceRef(id="cam", kind="camera",
                                                                name="cam"),
                 images=[media])


def _disk(directory: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``directory``."""
    files = [p.stat() for p in directory.rglob("*") if p.is_file()]
    return sum(s.st_size for s in files), sum(s.st_blocks * 512 for s in files)


def store_when_full(workdir: Path, max_bytes: int) -> tuple[int, int, int, float, float]:
    """Write twice ``max_bytes`` of images; (apparent, allocated, peak apparent, puts/s,
    plain file writes/s)."""
    path = workdir / "media-store"
    shutil.rmtree(path, ignore_errors=True)
    store = MediaStore(path, max_bytes, 3600)
    events = [_event(i) for i in range(2 * max_bytes // IMAGE_BYTES)]
    peak = 0
    t0 = time.perf_counter()
    for i, event in enumerate(events):
        store.put_event(event)
        if i % 16 == 0:
            peak = max(peak, _disk(path)[0])
    rate = len(events) / (time.perf_counter() - t0)
    apparent, allocated = _disk(path)
    peak = max(peak, apparent)
    store.close()
    plain = workdir / "plain-files"
    plain.mkdir(exist_ok=True)
    blobs = [base64.b64decode(e.images[0].data or "") for e in events]
    t0 = time.perf_counter()
    for i, blob in enumerate(blobs):
        (plain / f"{i}.jpg").write_bytes(blob)
    plain_rate = len(blobs) / (time.perf_counter() - t0)
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(plain, ignore_errors=True)
    return apparent, allocated, peak, rate, plain_rate


class _Counter:
    """Counts bytes (topic + payload) of every message under a topic filter."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.lock = threading.Lock()
        self.started: float | None = None
        self.bytes = 0
        self.messages = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect(host, port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            if self.started is None:
                if "/events/" not in msg.topic:
                    return  # count from the first event: start-up is not the steady state
                self.started = time.monotonic()
            self.bytes += len(msg.topic) + len(msg.payload)
            self.messages += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def demo_bytes_per_hour(workdir: Path, transport: str, seconds: float) -> tuple[float, int]:
    """Bytes per hour (extrapolated) the demo sends with ``transport``, and messages counted."""
    from scripts.harness.agent_process import AgentProcess
    from scripts.harness.broker import Broker

    run_dir = workdir / f"demo-{transport}"
    run_dir.mkdir(parents=True, exist_ok=True)
    broker = Broker(run_dir)
    broker.start()
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    base = REPO / "config"
    for camera in demo.get("cameras", []):
        camera["url"] = str((base / camera["url"]).resolve())
    for mic in demo.get("microphones", []):
        mic["file"] = str((base / mic["file"]).resolve())
    models = demo.setdefault("models", {})
    models["dir"] = str((base / models.get("dir", "../models")).resolve())
    demo["mqtt"] = {**demo.get("mqtt", {}), "host": broker.host, "port": broker.port,
                    "media_transport": transport}
    demo["outbox"] = {**demo.get("outbox", {}), "path": str(run_dir / "outbox")}
    demo.pop("homeassistant", None)
    prefix = demo["mqtt"].get("topic_prefix", "edge-agent")
    counter = _Counter(broker.host, broker.port, f"{prefix}/{demo['device']['id']}/#")
    agent = AgentProcess(run_dir, demo).start()
    try:
        deadline = time.monotonic() + 90
        while counter.started is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if counter.started is None:
            raise RuntimeError(f"demo with {transport}: no event within 90 s: {agent.log[-800:]}")
        time.sleep(seconds)
        with counter.lock:
            elapsed = time.monotonic() - counter.started
            counted, messages = counter.bytes, counter.messages
    finally:
        agent.stop()
        counter.close()
        broker.stop()
    return counted * 3600 / elapsed, messages


def run(workdir: Path, quick: bool) -> list[Row]:
    """Store size when full and write rate; demo bytes per hour with each transport."""
    rows: list[Row] = []
    max_bytes = (8 if quick else 32) * 1024 * 1024
    apparent, allocated, peak, rate, plain_rate = store_when_full(workdir, max_bytes)
    rows.append(Row(SECTION, "media store on disk when full, 50 KB images", round(
        apparent / 1e6, 2), "MB", "media.max_bytes", round(max_bytes / 1e6, 2),
        target="<= media.max_bytes", ok=peak <= max_bytes,
        note=f"after writing twice the bound; peak {peak / 1e6:.2f} MB; allocated "
             f"{allocated / 1e6:.2f} MB (file system blocks)"))
    rows.append(Row(SECTION, "media store put, one 50 KB image per event", round(rate, 1),
                    "events/s", "plain file writes of the same bytes", round(plain_rate, 1),
                    note="includes eviction of the oldest while full"))
    seconds = 45.0 if quick else 120.0
    inline: float | None = None
    for transport in ("inline", "topic", "request"):
        per_hour, messages = demo_bytes_per_hour(workdir, transport, seconds)
        if transport == "inline":
            inline = per_hour
        rows.append(Row(SECTION, f"demo bytes sent per hour, media_transport {transport}",
                        round(per_hour / 1e6, 2), "MB/h",
                        None if transport == "inline" else "media_transport inline",
                        None if transport == "inline" or inline is None
                        else round(inline / 1e6, 2),
                        note=f"{messages} messages in {seconds:.0f} s from the first event, "
                             f"extrapolated to an hour; no media requested"))
    return rows
