#!/usr/bin/env python3
"""Regenerate the committed JSON Schemas under agent/schemas/ from the pydantic models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.events.schema import json_schemas

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "agent" / "schemas"


def render(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, schema in json_schemas().items():
        (SCHEMA_DIR / name).write_text(render(schema), encoding="utf-8")
        print(f"wrote agent/schemas/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
