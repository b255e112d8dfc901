"""Dry runs: replay recorded base events through rules and print the composite events.

The input is what the agent publishes, one JSON ``Event`` a line (a subscriber's recording of
``.../events/#`` will do). It is read once, line by line, so memory does not grow with the
file: the engine holds what its windows hold, bounded as ``docs/rules.md`` says. The engine's
clock follows event time, so an hour of recording replays in seconds with the result the
device would have produced. At the end of the input every composite still open is closed
when its window passes (``ended_at`` = newest member + window), as if nothing came after.

A line that is not an event (bad JSON, a field the schema refuses, bytes that are not UTF-8)
is skipped and reported with its line number; the run goes on, and ends with exit status 65
(``EX_DATAERR``) instead of 0 so a script notices.

Usage (the CLI wires it as ``edge-agent rules test -c FILE EVENTS.jsonl``)::

    python -m agent.rules.dryrun -c config.yaml events.jsonl [--finals-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pydantic import ValidationError

from agent.clock import ManualClock
from agent.events.schema import CompositeEvent, DeviceRef, Event
from agent.rules.config import RuleConfig, RulesError, parse_rules
from agent.rules.engine import RuleEngine

MAX_REPORTED = 20
"""Bad lines printed one by one; the rest are counted."""

EX_DATAERR = 65
EX_NOINPUT = 66


class DryRunError(ValueError):
    """The recording cannot be replayed at all (missing, unreadable)."""


@dataclass
class DryRunResult:
    """What a dry run did: events read, bad lines, composites (distinct ids) and finals."""

    events: int = 0
    bad_lines: int = 0
    composites: int = 0
    finals: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first MAX_REPORTED bad lines

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def _problem(path: Path, number: int, raw: bytes, exc: ValidationError) -> str:
    """Why line ``number`` is not an event, in one line."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"{path}:{number}: not UTF-8 (byte {bad.start + 1} of the line)"
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"])
    return (
        f"{path}:{number}: not an event: {where + ': ' if where else ''}{first['msg']}"
        + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")
    )


def read_events(path: Path, result: DryRunResult, report: TextIO | None) -> Iterator[Event]:
    """The events of the recording, one line at a time; bad lines counted in ``result`` and
    the first ``MAX_REPORTED`` printed to ``report``. ``DryRunError`` if it cannot be read."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DryRunError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                event = Event.model_validate_json(raw)
            except ValidationError as exc:
                message = _problem(path, number, raw, exc)
            else:
                result.events += 1
                yield event
                continue
            result.bad_lines += 1
            if len(result.problems) < MAX_REPORTED:
                result.problems.append(message)
                if report is not None:
                    print(message, file=report, flush=True)


def _summary_line(composite: CompositeEvent) -> str:
    labels = ",".join(label.id for label in composite.labels)
    return (
        f"{composite.status:5} {composite.rule.id} {composite.group_key} "
        f"{composite.event_count} events [{labels}] "
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
) -> DryRunResult:
    """Replay ``events_jsonl`` through ``rules``; print each composite event as a JSON line.

    ``out`` gets every message the daemon would publish (``updates=False``: only the final
    state of each composite); ``summary`` gets the bad lines, one readable line per final
    composite and a total with the throughput. Raises ``DryRunError`` when the file cannot
    be read, ``ValueError`` for rules the engine refuses.
    """
    result = DryRunResult()
    clock = ManualClock(start=0.0)  # the engine's now follows event time from here on
    engine = RuleEngine(rules, DeviceRef(id=device_id), clock)
    open_ids: set[str] = set()  # composites not final yet: bounded by the open groups
    began = time.perf_counter()

    def emit(composites: list[CompositeEvent]) -> None:
        for composite in composites:
            if composite.status == "final":
                open_ids.discard(composite.id)
                result.finals += 1
                if summary is not None:
                    print(_summary_line(composite), file=summary)
            elif composite.id not in open_ids:
                open_ids.add(composite.id)
            if updates or composite.status == "final":
                out.write(composite.model_dump_json() + "\n")

    try:
        # One event a call, as the daemon feeds them: the same messages come out.
        for event in read_events(events_jsonl, result, summary):
            emit(engine.process(event))
        emit(engine.drain())
    finally:
        engine.close()
    result.composites = result.finals + len(open_ids)
    result.seconds = time.perf_counter() - began
    if summary is not None:
        bad = (f"; {result.bad_lines} bad lines skipped (exit status {EX_DATAERR})"
               if result.bad_lines else "")
        print(
            f"{result.events} events, {len(rules)} rules: {result.composites} composite "
            f"events ({result.finals} final) in {result.seconds:.1f} s, "
            f"{result.events_per_second:,.0f} events/s{bad}",
            file=summary,
        )
    return result


def run(rules: list[RuleConfig], device_id: str, events_jsonl: Path, *,
        finals_only: bool = False, prog: str = "rules test") -> int:
    """The dry run as a command: prints to stdout and stderr, returns the exit status
    (0; 65 when some lines were not events or the rules are refused; 66 unreadable file)."""
    try:
        result = dry_run(rules, device_id, events_jsonl, sys.stdout, updates=not finals_only)
    except DryRunError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EX_DATAERR
    return EX_DATAERR if result.bad_lines else 0


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
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return EX_DATAERR
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return EX_NOINPUT
    return run(rules, device_id, args.events, finals_only=args.finals_only, prog="dryrun")


if __name__ == "__main__":
    sys.exit(main())
