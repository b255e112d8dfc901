#!/usr/bin/env python3
"""Benchmarks: every figure beside its reference, measured in the same run on this machine.

    .venv/bin/python scripts/bench.py                 all sections
    .venv/bin/python scripts/bench.py --quick         smaller runs
    .venv/bin/python scripts/bench.py --only outbox,delivery --json bench.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scripts.benchmarks import Row  # noqa: E402

SECTIONS = ["outbox", "delivery", "rules", "vision_model", "segmentation", "vision", "audio",
            "config", "media"]


def machine() -> dict[str, object]:
    import os

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def print_table(rows: list[Row]) -> None:
    header = ("section", "measure", "value", "unit", "reference", "ref value", "ratio", "target",
              "ok")
    table = [header] + [
        (r.section, r.name, fmt(r.value), r.unit, r.reference_name or "-", fmt(r.reference_value),
         f"{r.ratio:.2f}" if r.ratio is not None else "-", r.target or "-",
         {True: "yes", False: "NO", None: "-"}[r.ok])
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
    for i, line in enumerate(table):
        print(" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--workdir", type=Path, default=REPO / "var",
                        help="where benchmark files go (the disk being measured)")
    args = parser.parse_args()
    sections = args.only.split(",") if args.only else SECTIONS
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    failed: list[str] = []
    for name in sections:
        try:
            module = importlib.import_module(f"scripts.benchmarks.{name}")
        except ImportError as exc:
            print(f"bench: section {name} unavailable: {exc!r}", file=sys.stderr)
            failed.append(name)
            continue
        print(f"bench: running {name}...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            try:
                rows.extend(module.run(Path(tmp), args.quick))
            except Exception as exc:
                print(f"bench: section {name} failed: {exc!r}", file=sys.stderr)
                failed.append(name)
        print(f"bench: {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "quick": args.quick,
                                         "rows": [r.to_dict() for r in rows]}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
