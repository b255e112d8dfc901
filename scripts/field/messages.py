#!/usr/bin/env python3
"""What the field checks' subscriber saw: reads the JSON lines ``mosquitto_sub -F '%j'``
writes and answers one question per call. Standard library only: it runs with the system
Python of the container under test, not the agent's venv.

    messages.py FILE statuses [--since OFFSET]     status payloads, in order
    messages.py FILE count SOURCE [--run RUN] [--since OFFSET]   events from one source
    messages.py FILE gaps                          per run and source: missing seq numbers
    messages.py FILE runs                          run ids in the order first seen
    messages.py FILE kinds [--since OFFSET]        event kinds (object, sound, synthetic...)
    messages.py FILE labels KIND [--since OFFSET]  labels of the events of one kind

``OFFSET`` is a byte offset into FILE (its size before an action), so a question can be
about what arrived after that action only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from typing import Any


def read(path: str, since: int = 0) -> Iterator[dict[str, Any]]:
    """The messages in ``path`` from byte ``since`` on (a torn last line is skipped)."""
    with open(path, "rb") as f:
        f.seek(since)
        for raw in f:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            payload = message.get("payload")
            if isinstance(payload, str) and payload.startswith("{"):
                with contextlib.suppress(ValueError):
                    message["json"] = json.loads(payload)
            yield message


def events(path: str, since: int = 0) -> Iterator[dict[str, Any]]:
    for message in read(path, since):
        topic = message.get("topic", "")
        if "/events/" in topic and isinstance(message.get("json"), dict):
            yield message["json"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file")
    parser.add_argument("question",
                        choices=["statuses", "count", "gaps", "runs", "kinds", "labels"])
    parser.add_argument("source", nargs="?")
    parser.add_argument("--since", type=int, default=0)
    parser.add_argument("--run", help="count: only events of this run_id")
    args = parser.parse_args()

    if args.question == "statuses":
        # The device's own edge-agent/{device}/status, not a source's or the outbox's.
        print(" ".join(m.get("payload", "") for m in read(args.file, args.since)
                       if m.get("topic", "").endswith("/status")
                       and m.get("topic", "").count("/") == 2))
    elif args.question == "count":
        print(sum(1 for e in events(args.file, args.since)
                  if e.get("source", {}).get("id") == args.source
                  and (args.run is None or e.get("run_id") == args.run)))
    elif args.question == "kinds":
        kinds: dict[str, int] = defaultdict(int)
        for e in events(args.file, args.since):
            kinds[str(e.get("kind"))] += 1
        print(" ".join(f"{k}={n}" for k, n in sorted(kinds.items())))
    elif args.question == "labels":
        labels: dict[str, int] = defaultdict(int)
        for e in events(args.file, args.since):
            if e.get("kind") == args.source:
                labels[str((e.get("label") or {}).get("id"))] += 1
        print(" ".join(f"{k}={n}" for k, n in sorted(labels.items())))
    elif args.question == "runs":
        seen: list[str] = []
        for e in events(args.file):
            if e.get("run_id") and e["run_id"] not in seen:
                seen.append(e["run_id"])
        print(" ".join(seen))
    else:  # gaps
        seqs: dict[tuple[str, str], set[int]] = defaultdict(set)
        for e in events(args.file):
            if e.get("run_id") is not None and e.get("seq") is not None:
                seqs[(e["run_id"], e.get("source", {}).get("id", "?"))].add(int(e["seq"]))
        missing = {key: sorted(set(range(max(s) + 1)) - s) for key, s in seqs.items()}
        total = sum(len(s) for s in seqs.values())
        lost = sum(len(m) for m in missing.values())
        runs = len({run for run, _ in seqs})
        print(f"{total} events from {runs} runs and {len(seqs)} run/source pairs, {lost} missing")
        for (run, source), gap in sorted(missing.items()):
            if gap:
                print(f"  run {run} source {source}: missing seq {gap[:20]}"
                      f"{' ...' if len(gap) > 20 else ''}")
        return 1 if lost else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
