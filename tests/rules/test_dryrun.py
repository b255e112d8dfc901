"""Dry runs replay a recording with event time as the clock, one line at a time."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.rules.dryrun import EX_DATAERR, dry_run, main
from agent.rules.engine import to_ms
from scripts.harness.agent_process import REPO, base_config
from tests.rules.helpers import T0_MS, make_event, rule


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
    result = dry_run([rule(window_seconds=10, min_events=3)], "edge-01", path, out,
                     summary=summary)
    assert (result.events, result.composites, result.finals, result.bad_lines) == (6, 2, 2, 0)
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["status"] for p in printed] == ["open", "final", "open", "final"]
    assert [p["event_count"] for p in printed] == [3, 3, 3, 3]
    assert "2 composite events (2 final)" in summary.getvalue()
    assert "events/s" in summary.getvalue()
    # The composite still open at the end of the input closes when its window passes, not
    # years later: ended_at and updated_at are its newest member + the window.
    last = printed[-1]
    end = T0_MS + 3_600_000 + 2_000 + 10_000
    assert last["ended_at"] == last["updated_at"] == _iso(end)


def _iso(ms: int) -> str:
    from agent.rules.engine import from_ms

    return from_ms(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_bad_lines_are_named_counted_and_skipped(tmp_path: Path) -> None:
    good = [make_event(i, i * 100).model_dump_json() for i in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([
        good[0].encode(), b"{not json", b"", b'{"kind": "object"}',
        "caf\u00e9".encode("latin-1"), good[1].encode(), good[2].encode(),
    ]) + b"\n")
    out, summary = io.StringIO(), io.StringIO()
    result = dry_run([rule(min_events=3)], "edge-01", path, out, summary=summary)
    assert result.bad_lines == 3 and result.events == 3
    assert [p.split(": ")[0] for p in result.problems] == [
        f"{path}:2", f"{path}:4", f"{path}:5"]
    assert "not an event" in result.problems[0]
    assert "not UTF-8" in result.problems[2]
    # The good lines still made their composite, and the summary says the run was not clean.
    assert result.finals == 1
    assert f"3 bad lines skipped (exit status {EX_DATAERR})" in summary.getvalue()


def test_main_reads_rules_from_the_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("device: {id: edge-01}\nrules:\n  - {id: r, window_seconds: 5, "
                      "min_events: 0}\n", encoding="utf-8")
    path = _recording(tmp_path, [make_event(0, 0).model_dump_json()])
    assert main(["-c", str(config), str(path)]) == 65
    assert "rules[0] (r).min_events: must be at least 1" in capsys.readouterr().err


def test_edge_agent_rules_test_finals_only_and_exit_status(tmp_path: Path) -> None:
    config = base_config(tmp_path, 1, rules=[{"id": "burst", "window_seconds": 10,
                                              "min_events": 2}])
    config_path = tmp_path / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    events = [make_event(i, i * 100).model_dump_json() for i in range(4)]
    path = _recording(tmp_path, events)

    def rules_test(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", "rules", "test", "-c", str(config_path), *extra,
             str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)

    done = rules_test("--finals-only")
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(p["status"], p["event_count"], len(p["events"])) for p in printed] == [
        ("final", 4, 4)]
    assert to_ms(make_event(3, 300).timestamp) + 10_000 == T0_MS + 10_300

    # A recording with bytes that are not UTF-8: reported by line, no traceback, exit 65.
    path.write_bytes(path.read_bytes() + b"\xff\xfe\x00garbage\n")
    done = rules_test()
    assert done.returncode == EX_DATAERR
    assert f"{path}:5: not UTF-8" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stdout.splitlines()) >= 2  # the good lines were still replayed


def test_an_infinite_window_is_refused_without_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("rules:\n  - {id: r, window_seconds: .inf, min_events: 1}\n",
                      encoding="utf-8")
    path = _recording(tmp_path, [make_event(0, 0).model_dump_json()])
    assert main(["-c", str(config), str(path)]) == EX_DATAERR
    assert "window_seconds must be a finite number" in capsys.readouterr().err
