"""Dry runs replay a recording with event time as the clock."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from agent.rules.dryrun import DryRunError, dry_run, main
from tests.rules.helpers import make_event, rule


def _recording(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_replays_hours_in_event_time(tmp_path: Path) -> None:
    # Two bursts an hour apart: two composites, each printed open then final; the second
    # burst moves time on, which closes the first.
    events = [make_event(i, (i // 3) * 3_600_000 + (i % 3) * 1_000) for i in range(6)]
    path = _recording(tmp_path, [e.model_dump_json() for e in events])
    out, summary = io.StringIO(), io.StringIO()
    count = dry_run([rule(window_seconds=10, min_events=3)], "edge-01", path, out,
                    summary=summary)
    assert count == 2
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["status"] for p in printed] == ["open", "final", "open", "final"]
    assert [len(p["events"]) for p in printed] == [3, 3, 3, 3]
    assert "2 composite events (2 final)" in summary.getvalue()


def test_bad_lines_are_named(tmp_path: Path) -> None:
    good = make_event(0, 0).model_dump_json()
    path = _recording(tmp_path, [good, "{not json", "", '{"kind": "object"}'])
    with pytest.raises(DryRunError) as caught:
        dry_run([rule()], "edge-01", path, io.StringIO(), summary=None)
    assert [line.split(": ")[0] for line in caught.value.lines] == [f"{path}:2", f"{path}:4"]
    assert "not an event" in caught.value.lines[0]


def test_main_reads_rules_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device: {id: edge-01}\nrules:\n  - {id: r, window_seconds: 5, "
                      "min_events: 0}\n", encoding="utf-8")
    path = _recording(tmp_path, [make_event(0, 0).model_dump_json()])
    assert main(["-c", str(config), str(path)]) == 65
    assert "rules[0] (r).min_events: must be at least 1" in capsys.readouterr().err
