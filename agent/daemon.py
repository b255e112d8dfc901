"""Wiring: the one place that knows every stage, starts and stops them, and handles signals.

    workers (sources -> inference -> events) --emit--> Dispatcher
        Dispatcher: check metadata -> outbox (durable) -> rules -> outbox
    MqttLink: outbox -> broker (PUBACK -> ack), availability, retained source status
    main loop: rule timers, TTL, stats, systemd watchdog (fed only while healthy), SIGHUP reload
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import AgentConfig, ConfigError, load_config, read_mqtt_password
from agent.dispatch import Dispatcher
from agent.events.schema import DeviceRef, LabelName
from agent.inference.session import slowest_run_s
from agent.labels import LabelCatalogue
from agent.media.latest import LatestSnapshots
from agent.media.store import MediaStore
from agent.mqtt.commands import CommandRouter
from agent.mqtt.discovery import DiscoveryAnnouncer
from agent.mqtt.link import MqttLink
from agent.notify import SystemdNotifier
from agent.outbox.store import Outbox
from agent.pipeline.audio import build_audio_worker
from agent.pipeline.base import Worker
from agent.pipeline.synthetic import SyntheticWorker
from agent.pipeline.vision import build_vision_worker
from agent.rules.engine import RuleEngine
from agent.sources.base import SourceState, SourceStatus
from agent.sources.config import CameraConfig, MicrophoneConfig, SourceCommon, SyntheticConfig
from agent.stats import SystemSampler

logger = logging.getLogger(__name__)

HUNG_AFTER_S = 20.0
"""A worker or the MQTT loop that has not gone round for this long is hung."""

HUNG_FLOOR_S = 3.0
"""Never call a thread hung sooner: idle loops beat about once a second."""

SLOW_INFERENCE_ALLOWANCE = 4.0
"""A source is never hung sooner than this many times the slowest inference run seen: a
big model on a small board (or under emulation) is slow, not stuck."""

HUNG_CEILING_S = 300.0
"""The most that slow inference can stretch a source's limit to."""

MEDIA_EXPIRY_EVERY_S = 10.0
"""How often media older than media.retention are removed from the store."""

STOP_DEADLINE_S = 4.0
"""From SIGTERM to the end of the process, at most, whatever a native library is doing."""

WORKERS_STOP_S = 2.0
"""How long a stop waits for the sources, leaving the rest of the deadline to delivery."""


def exit_now(code: int) -> NoReturn:
    """End the process at once after flushing the log, without Python's exit hooks.

    The hooks are what can hang: sounddevice's calls PortAudio's terminate, which never
    returns once the sound server died, and a stream still closing on another thread blocks
    the interpreter's own shutdown. Everything that matters is already closed or durable
    (the outbox commits each message), so leaving here loses nothing.
    """
    def flush() -> None:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # closed or gone: nothing to flush
                stream.flush()

    # Bounded: a log handler stuck on a full pipe must not keep the process alive either.
    flusher = threading.Thread(target=flush, name="exit-flush", daemon=True)
    flusher.start()
    flusher.join(0.4)
    os._exit(code)


class StateError(RuntimeError):
    """State the agent keeps on disk besides the outbox (open rule windows, the media store)
    cannot be opened."""


class Daemon:
    """The running agent: build everything from a config, run until told to stop."""

    def __init__(self, config: AgentConfig, config_path: Path | None = None,
                 clock: Clock | None = None, notifier: SystemdNotifier | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.started_at = time.time()
        self.device = DeviceRef(id=config.device.id, site=config.device.site,
                                location=config.device.location)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._deadline: threading.Thread | None = None
        self._stop_step = "finishing the current step"  # what shutdown is doing, for the log
        self._reload = threading.Event()
        self._stats_now = threading.Event()
        self.catalogue = LabelCatalogue.load(config.models.labels_dir)
        # Sources that name the same model share one loaded session.
        self._detectors: dict[str, Any] = {}
        self._classifiers: dict[str, Any] = {}
        self.outbox = Outbox(config.outbox, self.clock)
        self.media = self._build_media_store()
        self.link = MqttLink(config.mqtt, config.device.id, self.outbox,
                             read_mqtt_password(config.mqtt), self.clock)
        self.latest: LatestSnapshots | None = None
        if config.media.latest_snapshot:
            self.latest = LatestSnapshots(self.link.topics.base, self.link.set_retained)
        self.dispatcher = Dispatcher(config, self.outbox, self.link.wake, self._build_engine(),
                                     media=self.media,
                                     on_media=self.latest.on_event if self.latest else None)
        self.workers: dict[str, Worker] = {}
        self._hung_reported: set[str] = set()
        self._slow_inference_told = False
        self._outbox_state: str | None = None  # last published on .../outbox/status
        # Threads that died of an uncaught exception (threading.excepthook), name -> cause.
        self._deaths: dict[str, str] = {}
        self._deaths_reported: set[str] = set()
        self._deaths_lock = threading.Lock()
        # Sources whose detection or thresholds a command changed: a reload undoes it.
        self._runtime_changes: dict[str, set[str]] = {}
        self._runtime_lock = threading.Lock()
        self._system = SystemSampler(config.outbox.path)
        # Operations: commands on set/# (results on result/#), Home Assistant discovery.
        self.commands: CommandRouter | None = None
        if config.commands.enabled:
            self.commands = CommandRouter(
                self.link.topics.base, self,
                lambda t, p, props=None: self.link.publish(t, p, qos=1, properties=props),
                config.commands)
            self.link.subscribe(self.commands.subscription, self.commands.handle,
                                accept_retained=False, with_properties=True)
        self.discovery: DiscoveryAnnouncer | None = None
        if config.homeassistant.enabled:
            self.discovery = DiscoveryAnnouncer(config, self.link.set_retained)
            self.link.subscribe(self.discovery.ha_status_topic, self.discovery.on_ha_status)

    # -- building ---------------------------------------------------------------------------

    def _label_names(self, label_id: str) -> LabelName | None:
        info = self.catalogue.find(label_id)
        return LabelName(en=info.en, ko=info.ko) if info else None

    @property
    def rules_state_dir(self) -> Path:
        """Open rule windows persist beside the outbox (systemd's StateDirectory)."""
        return self.config.outbox.path.parent / "rules-state"

    def _build_media_store(self) -> MediaStore | None:
        media = self.config.media
        if not media.active(self.config.mqtt.media_transport):
            return None
        directory = media.directory(self.config.outbox.path)
        try:
            return MediaStore(directory, media.max_bytes, media.retention)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"media store {directory} (media.path): cannot open: {exc}") from exc

    def _build_engine(self) -> RuleEngine | None:
        if not self.config.rules:
            return None
        try:
            return RuleEngine(self.config.rules, self.device, self.clock, self.rules_state_dir,
                              label_names=self._label_names)
        except (OSError, sqlite3.Error, RuntimeError) as exc:
            raise StateError(f"rules state {self.rules_state_dir}: cannot open: {exc}") from exc

    def _status_listener(self, status: SourceStatus) -> None:
        logger.info("%s %s: %s%s", status.kind, status.source_id, status.state.value,
                    f" ({status.detail})" if status.detail else "")
        self.link.set_retained(self.link.topics.source_status(status.source_id),
                               json.dumps(status.to_dict()).encode())

    def build_worker(self, source: SourceCommon) -> Worker:
        """A worker for one configured source."""
        emit = self.dispatcher.emit
        models = self.config.models
        if isinstance(source, CameraConfig):
            return build_vision_worker(source, models.detectors, models.dir, self.catalogue,
                                       self.device, emit, self.clock, self._status_listener,
                                       detector_cache=self._detectors)
        if isinstance(source, MicrophoneConfig):
            return build_audio_worker(source, models.audio, models.dir, self.device, emit,
                                      self.clock, self._status_listener,
                                      catalogue=self.catalogue, classifiers=self._classifiers)
        if isinstance(source, SyntheticConfig):
            return SyntheticWorker(source, self.device, emit, self.clock, self._status_listener,
                                   self._label_names)
        raise TypeError(f"no worker for source {source.id} ({type(source).__name__})")

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start delivery, then sources."""
        if self.discovery is not None:
            self.discovery.announce()
        self.link.start()
        self.publish_outbox_state()
        for source in self.config.all_sources():
            if source.enabled:
                self._start_worker(source)
        self.notifier.ready()
        self.notifier.status(self._status_line())
        logger.info("edge-agent %s running: device %s, %d sources, outbox %s", __version__,
                    self.config.device.id, len(self.workers), self.config.outbox.path)

    def _start_worker(self, source: SourceCommon) -> None:
        try:
            worker = self.build_worker(source)
        except Exception as exc:  # one bad source must not stop the others
            logger.error("source %s: cannot start: %s", source.id, exc)
            return
        self.workers[source.id] = worker
        worker.start()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    def request_stats(self) -> None:
        self._stats_now.set()

    def note_runtime_change(self, source_id: str, what: str) -> None:
        """A command changed ``what`` (detection, thresholds) of a source; see ``reload``."""
        with self._runtime_lock:
            self._runtime_changes.setdefault(source_id, set()).add(what)

    def install_signal_handlers(self) -> None:
        def on_stop(signum: int, frame: FrameType | None) -> None:
            logger.info("received %s; stopping", signal.Signals(signum).name)
            self._stop.set()
            self._arm_stop_deadline()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_hup)

    def _arm_stop_deadline(self) -> None:
        """Make sure the process ends ``STOP_DEADLINE_S`` after a stop signal.

        Armed by the signal handler only: a daemon run inside another program (the tests)
        is never ended from under it.
        """
        if self._deadline is not None:
            return
        self._deadline = threading.Thread(target=self._exit_at_deadline, name="stop-deadline",
                                          daemon=True)
        self._deadline.start()

    def _exit_at_deadline(self) -> None:
        if self._stopped.wait(STOP_DEADLINE_S):
            return
        others = sorted(t.name for t in threading.enumerate()
                        if t is not threading.current_thread() and t.name != "MainThread")
        logger.warning("shutdown: not finished %.1f s after the stop signal, still %s (other "
                       "threads: %s); leaving without them. Nothing is lost: the outbox is "
                       "durable and undelivered messages are sent after the next start",
                       STOP_DEADLINE_S, self._stop_step, ", ".join(others) or "none")
        exit_now(0)

    def _on_thread_death(self, args: threading.ExceptHookArgs) -> None:
        """``threading.excepthook`` while running: a thread that dies is an ERROR in the log,
        with its cause, and starves the watchdog (see ``healthy``)."""
        name = args.thread.name if args.thread is not None else "a thread"
        cause = f"{args.exc_type.__name__}: {args.exc_value}"
        with self._deaths_lock:
            self._deaths[name] = cause
        logger.error("thread %s died: %s", name, cause, exc_info=args.exc_value or False)

    def run(self) -> int:
        """Run until stopped; returns the exit code."""
        previous_hook = threading.excepthook
        threading.excepthook = self._on_thread_death
        try:
            return self._run()
        finally:
            threading.excepthook = previous_hook

    def _run(self) -> int:
        self.start()
        interval = self.config.stats.interval
        next_stats = self.clock.monotonic() + min(5.0, interval)
        now_s = self.clock.monotonic
        next_media_expiry = now_s()
        beat = 1.0
        if self.notifier.watchdog_interval:
            beat = min(beat, self.notifier.watchdog_interval / 3)
        while not self._stop.wait(beat):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self.dispatcher.tick()
            self.outbox.expire()
            self.publish_outbox_state()
            if self.media is not None and now_s() >= next_media_expiry:
                self.media.expire()
                next_media_expiry = now_s() + MEDIA_EXPIRY_EVERY_S
            if self.healthy():
                self.notifier.watchdog()
            now = self.clock.monotonic()
            if now >= next_stats or self._stats_now.is_set():
                self._stats_now.clear()
                self.publish_stats()
                next_stats = now + self.config.stats.interval
        self.shutdown()
        return 0

    def hung_after(self) -> float:
        """Seconds without progress that make a thread hung: ``HUNG_AFTER_S``, or half the
        systemd watchdog interval when that is shorter (not below ``HUNG_FLOOR_S``), so a hang
        stops the WATCHDOG=1 pings early enough for systemd to restart within WatchdogSec."""
        interval = self.notifier.watchdog_interval
        if not interval:
            return HUNG_AFTER_S
        return min(HUNG_AFTER_S, max(interval / 2, HUNG_FLOOR_S))

    def source_hung_after(self) -> float:
        """``hung_after`` for a source: at least ``SLOW_INFERENCE_ALLOWANCE`` times the
        slowest inference run seen in this process (up to ``HUNG_CEILING_S``). The main
        thread keeps feeding systemd's watchdog meanwhile, so a longer limit only delays
        the restart of a source that really hangs."""
        limit = self.hung_after()
        stretched = min(SLOW_INFERENCE_ALLOWANCE * slowest_run_s(), HUNG_CEILING_S)
        if stretched > limit:
            if not self._slow_inference_told:
                self._slow_inference_told = True
                logger.info("inference takes up to %.1f s on this device: a source is called "
                            "hung after %.0f s without progress (not %.0f s)", slowest_run_s(),
                            stretched, limit)
            return stretched
        return limit

    def dead_threads(self) -> dict[str, str]:
        """Threads that should be alive and are not, with the cause: a worker or any other
        thread that died of an exception, the MQTT threads once started and not stopped.
        A source that ended or gave up on its own (``ended``, ``error``) is not dead."""
        with self._deaths_lock:
            dead = dict(self._deaths)
        for sid, worker in self.workers.items():
            if worker.crashed is not None and not worker.alive:
                dead[f"source {sid}"] = worker.crashed
        if not self.link.alive and not self._stop.is_set():
            dead.setdefault("mqtt", "the network thread is not running")
        return dead

    def healthy(self) -> bool:
        """True while every thread that matters is alive and still goes round; logs what
        died or hangs, once. A dead thread's last heartbeat says nothing, so it is checked
        first: its age would read 0."""
        dead = self.dead_threads()
        for name, cause in dead.items():
            if name not in self._deaths_reported:
                self._deaths_reported.add(name)
                if self.notifier.watchdog_interval:
                    logger.error("%s is dead (%s); no longer feeding the watchdog, so systemd "
                                 "restarts the agent", name, cause)
                else:
                    logger.error("%s is dead (%s); restart the agent (no systemd watchdog "
                                 "to do it)", name, cause)
        limit = self.source_hung_after()
        hung = {sid: w.heartbeat_age() for sid, w in self.workers.items()
                if w.heartbeat_age() > limit}
        if self.link.heartbeat_age() > self.hung_after():
            hung["mqtt"] = self.link.heartbeat_age()
        for name, age in hung.items():
            if name not in self._hung_reported:
                logger.error("%s: no progress for %.0f s; starving the watchdog so systemd "
                             "restarts the agent", name, age)
        self._hung_reported = set(hung)
        return not hung and not dead

    def publish_outbox_state(self) -> None:
        """Retained ``.../outbox/status`` (``ok`` or ``disk_full``), published when it changes.

        The device's own ``.../status`` stays the bare availability word that Home Assistant
        and the last will use; a full disk is a state of the outbox, not of the device.
        """
        ob = self.outbox.stats()
        state = "disk_full" if ob.disk_full else "ok"
        if state == self._outbox_state:
            return
        self._outbox_state = state
        payload = {"state": state, "since": round(self.clock.time(), 3), "depth": ob.depth,
                   "drops": ob.drops.get("disk_full", 0)}
        self.link.set_retained(self.link.topics.full("outbox/status"),
                               json.dumps(payload).encode())

    def _status_line(self) -> str:
        ob = self.outbox.stats()
        return (f"{len(self.workers)} sources, outbox {ob.depth} events"
                f"{' (disk full)' if ob.disk_full else ''}, "
                f"mqtt {'connected' if self.link.connected else 'disconnected'}")

    def stats(self) -> dict[str, Any]:
        """The stats document published on ``.../stats``."""
        ob = self.outbox.stats()
        drops = dict(ob.drops)
        for reason, n in self.dispatcher.rejected.items():
            drops[reason] = drops.get(reason, 0) + n
        if self.link.broker_rejected:
            drops["broker_rejected"] = self.link.broker_rejected
        return {
            "device_id": self.config.device.id,
            "version": __version__,
            "timestamp": round(time.time(), 3),
            "uptime_s": round(time.time() - self.started_at, 1),
            "outbox": {
                "depth": ob.depth, "bytes": ob.bytes, "oldest_age_s": ob.oldest_age_s,
                "in_flight": ob.in_flight, "enqueued": ob.enqueued, "acked": ob.acked,
                "shed": ob.shed, "disk_full": ob.disk_full, "set_aside_bytes": ob.set_aside_bytes,
            },
            "drops": drops,
            "events_accepted": self.dispatcher.accepted,
            "composites_published": self.dispatcher.composites,
            "mqtt": self.link.stats(),
            "sources": {sid: w.stats() for sid, w in self.workers.items()},
            "system": self._system.sample(),
            **({"rules": engine.stats()} if (engine := self.dispatcher.engine) else {}),
            **({"commands": self.commands.stats()} if self.commands else {}),
            **({"media": self.media.stats()} if self.media else {}),
        }

    def publish_stats(self) -> None:
        self.link.publish(self.link.topics.stats, json.dumps(self.stats()).encode(), qos=0)
        self.notifier.status(self._status_line())

    def reload(self) -> None:
        """Apply a changed config file (SIGHUP) or log precisely why not."""
        if self.config_path is None:
            logger.warning("reload: no config file to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            logger.error("reload: %s is invalid; keeping the running config: %s",
                         self.config_path, "; ".join(exc.lines))
            self.notifier.ready()
            return
        for section in ("device", "mqtt", "outbox", "media", "models"):
            if getattr(new, section) != getattr(self.config, section):
                logger.warning("reload: section %s changed; restart the agent to apply it",
                               section)
        old_sources = {s.id: s for s in self.config.all_sources()}
        new_sources = {s.id: s for s in new.all_sources()}
        self.config = new
        self.dispatcher.set_config(new)
        with self._runtime_lock:
            changed, self._runtime_changes = self._runtime_changes, {}
        for sid, worker in list(self.workers.items()):
            # Runtime changes last until the next reload (or restart), for every command:
            # thresholds go back to the file's with a fresh worker, detection back on.
            if new_sources.get(sid) != old_sources.get(sid) or "thresholds" in changed.get(
                    sid, ()):
                worker.stop()
                del self.workers[sid]
            elif "detection" in changed.get(sid, ()) and not worker.detection_enabled:
                worker.detection_enabled = True
                logger.info("reload: source %s: detection back on (as configured)", sid)
        for sid, source in new_sources.items():
            if sid not in self.workers and source.enabled:
                self._start_worker(source)
        self._reload_rules(new)
        if self.commands is not None:
            self.commands.set_config(new.commands)
        if self.discovery is not None:
            self.discovery.announce(new)
        logger.info("reload: applied %s (%d sources running)", self.config_path,
                    len(self.workers))
        self.notifier.ready()

    def _reload_rules(self, config: AgentConfig) -> None:
        engine = self.dispatcher.engine
        if engine is None:
            if config.rules:
                self.dispatcher.engine = self._build_engine()
            return
        with self.dispatcher.engine_lock:
            engine.reload(config.rules)

    def shutdown(self) -> None:
        """Stop within a few seconds: sources, then rules, then delivery, then the outbox.

        Every source's final ``stopped`` status is queued before the link stops, so the
        link sends it before it says ``stopped`` for the device and disconnects.
        """
        self.notifier.stopping()
        self._stop_step = "stopping the sources"
        stoppers = {sid: threading.Thread(target=w.stop, args=(WORKERS_STOP_S,),
                                          name=f"stop:{sid}", daemon=True)
                    for sid, w in self.workers.items()}
        for t in stoppers.values():
            t.start()
        end = time.monotonic() + WORKERS_STOP_S
        for t in stoppers.values():
            t.join(max(0.0, end - time.monotonic()))
        for sid, t in stoppers.items():
            if t.is_alive():
                # Stuck in a driver (a sound server that died): it is left behind at exit,
                # but its retained status must not keep saying running.
                logger.warning("source %s: did not stop within %.1f s; leaving it behind",
                               sid, WORKERS_STOP_S)
                self.workers[sid].tracker.set(
                    SourceState.STOPPED, f"did not stop within {WORKERS_STOP_S:.0f} s")
        self._stop_step = "closing the rules"
        self.dispatcher.tick()
        if self.dispatcher.engine is not None:
            self.dispatcher.engine.close()
        if self.commands is not None:
            self.commands.close()  # answers a pending snapshot before the link goes
        self._stop_step = "sending the final statuses"
        self.link.stop(2.0)
        self._stop_step = "closing the outbox"
        self.outbox.close()
        if self.media is not None:
            self.media.close()
        logger.info("stopped%s", "" if self.link.clean_stop else
                    " (unclean: the final statuses did not all reach the broker)")
        self._stopped.set()

