"""Runtime changes made by commands last until the next reload or restart, for every command
(docs/operations.md, Reload)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from agent.config import load_config
from agent.daemon import Daemon
from agent.pipeline.base import Worker
from agent.pipeline.synthetic import SyntheticWorker
from agent.sources.config import SourceCommon
from scripts.harness.agent_process import base_config
from scripts.harness.broker import Broker


class TunableWorker(SyntheticWorker):
    """A synthetic source that takes thresholds, like a camera or a microphone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threshold = 0.5  # "as configured"

    def set_thresholds(self, changes: dict[str, Any]) -> dict[str, Any]:
        self.threshold = changes.get("threshold", self.threshold)
        return {"threshold": self.threshold}


def test_reload_undoes_every_runtime_change(tmp_path: Path, broker: Broker) -> None:
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(base_config(
        tmp_path, broker.port,
        synthetic=[{"id": "quiet", "rate": 1}, {"id": "tuned", "rate": 1},
                   {"id": "untouched", "rate": 1}],
        rules=[{"id": "r1", "window_seconds": 5, "min_events": 2}])))
    daemon = Daemon(load_config(config_path), config_path)
    real_build = daemon.build_worker

    def build(source: SourceCommon) -> Worker:
        if source.id == "tuned":
            return TunableWorker(source, daemon.device, daemon.dispatcher.emit, daemon.clock,
                                 daemon._status_listener, daemon._label_names)
        return real_build(source)

    daemon.build_worker = build  # type: ignore[method-assign]
    assert daemon.commands is not None and daemon.dispatcher.engine is not None
    base = daemon.link.topics.base

    def command(suffix: str, payload: dict[str, Any]) -> None:
        daemon.commands.handle(f"{base}/set/{suffix}", json.dumps(payload).encode())

    daemon.start()
    try:
        command("sources/quiet/detection", {"enabled": False})
        command("sources/tuned/thresholds", {"threshold": 0.9})
        command("rules/r1/enabled", {"enabled": False})
        untouched = daemon.workers["untouched"]
        assert not daemon.workers["quiet"].detection_enabled
        assert daemon.workers["tuned"].threshold == 0.9  # type: ignore[attr-defined]
        assert daemon.dispatcher.engine.stats() and not _rule_enabled(daemon)

        daemon.reload()  # the file is unchanged

        assert daemon.workers["quiet"].detection_enabled
        assert daemon.workers["tuned"].threshold == 0.5  # type: ignore[attr-defined]
        assert _rule_enabled(daemon)
        assert daemon.workers["untouched"] is untouched, "a reload restarts only what changed"
    finally:
        daemon.request_stop()
        daemon.shutdown()


def _rule_enabled(daemon: Daemon) -> bool:
    engine = daemon.dispatcher.engine
    assert engine is not None
    return bool(engine._rules["r1"].enabled)
