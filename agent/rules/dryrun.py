"""Dry runs: replay recorded base events through rules and print the composite events.

The input is what the agent publishes, one JSON ``Event`` a line (a subscriber's recording of
``.../events/#`` will do). The engine's clock follows event time, so an hour of recording
replays in seconds with the result the device would have produced. At the end of the input,
time moves past every window, so each composite is printed in its final state too.

Usage (the CLI wires it as ``edge-agent rules test -c FILE EVENTS.jsonl``)::

    python -m agent.rules.dryrun -c config.yaml events.jsonl
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from agent.clock import ManualClock
from agent.events.schema import CompositeEvent, DeviceRef, Event
from agent.rules.config import RuleConfig, RulesError, parse_rules
from agent.rules.engine import RuleEngine, to_ms

MAX_REPORTED = 20
_FAR_FUTURE_S = 10 * 365 * 24 * 3600.0


class DryRunError(ValueError):
    """The recording cannot be replayed; ``lines`` holds one message per bad input line."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def read_events(events_jsonl: Path) -> list[Event]:
    """Every event of the recording; ``DryRunError`` naming each bad line (up to 20)."""
    events: list[Event] = []
    problems: list[str] = []
    try:
        handle = events_jsonl.open(encoding="utf-8")
    except OSError as exc:
        raise DryRunError([f"{events_jsonl}: cannot read: {exc.strerror or exc}"]) from exc
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                events.append(Event.model_validate_json(line))
            except ValidationError as exc:
                first = exc.errors(include_url=False, include_input=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                problems.append(
                    f"{events_jsonl}:{number}: not an event: "
                    f"{where + ': ' if where else ''}{first['msg']}"
                    + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
                )
                if len(problems) >= MAX_REPORTED:
                    problems.append(f"{events_jsonl}: stopped after {MAX_REPORTED} bad lines")
                    break
    if problems:
        raise DryRunError(problems)
    return events


def _summary_line(composite: CompositeEvent) -> str:
    labels = ",".join(label.id for label in composite.labels)
    return (
        f"{composite.status:5} {composite.rule.id} {composite.group_key} "
        f"{len(composite.events)} events [{labels}] "
        f"{composite.started_at.isoformat(timespec='milliseconds')}"
        + (f" .. {composite.ended_at.isoformat(timespec='milliseconds')}"
           if composite.ended_at else "")
    )


def dry_run(
    rules: list[RuleConfig],
    device_id: str,
    events_jsonl: Path,
    out: TextIO,
    *,
    summary: TextIO | None = sys.stderr,
    updates: bool = True,
) -> int:
    """Replay ``events_jsonl`` through ``rules``; print each composite event as a JSON line.

    ``out`` gets every message the daemon would publish (``updates=False``: only the final
    state of each composite); ``summary`` gets one readable line per final composite and a
    total. Returns the number of composite events (distinct ids). Raises ``DryRunError`` for
    unreadable or invalid input, before printing anything.
    """
    events = read_events(events_jsonl)
    clock = ManualClock(start=0.0)  # the engine's now follows event time from here on
    engine = RuleEngine(rules, DeviceRef(id=device_id), clock)
    seen: set[str] = set()
    finals = 0

    def emit(composites: list[CompositeEvent]) -> None:
        nonlocal finals
        for composite in composites:
            seen.add(composite.id)
            if composite.status == "final":
                finals += 1
                if summary is not None:
                    print(_summary_line(composite), file=summary)
            if updates or composite.status == "final":
                out.write(composite.model_dump_json() + "\n")

    try:
        for event in events:
            emit(engine.process(event))
        newest = max((to_ms(e.timestamp) for e in events), default=0) / 1000
        clock.advance(newest + _FAR_FUTURE_S)
        emit(engine.tick())
    finally:
        engine.close()
    if summary is not None:
        print(
            f"{len(events)} events, {len(rules)} rules: {len(seen)} composite events "
            f"({finals} final)",
            file=summary,
        )
    return len(seen)


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.rules.dryrun -c CONFIG EVENTS.jsonl``: reads ``rules:`` and
    ``device.id`` from the configuration file."""
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True)
    parser.add_argument("events", type=Path)
    parser.add_argument("--finals-only", action="store_true", help="skip open updates")
    args = parser.parse_args(argv)
    try:
        data = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        rules = parse_rules(data.get("rules"))
        device_id = str((data.get("device") or {}).get("id", "edge"))
        dry_run(rules, device_id, args.events, sys.stdout, updates=not args.finals_only)
    except (RulesError, DryRunError) as exc:
        print(exc, file=sys.stderr)
        return 65  # sysexits EX_DATAERR
    except (OSError, yaml.YAMLError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 66  # sysexits EX_NOINPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
