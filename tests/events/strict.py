"""Validators for the committed JSON Schemas, with the formats they declare checked."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from scripts.gen_schemas import SCHEMA_DIR

_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

formats = FormatChecker()


@formats.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True  # the type keyword's business
    if not _RFC3339.match(value):
        raise ValueError(f"not an RFC 3339 date-time: {value!r}")
    datetime.fromisoformat(value.replace("Z", "+00:00"))  # a real date and time
    return True


@cache
def validator(name: str) -> Draft202012Validator:
    """A validator for ``agent/schemas/{name}`` that checks formats too."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=formats)


def problems(name: str, document: Any) -> list[str]:
    """Every way ``document`` departs from the schema, as readable lines."""
    return [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in validator(name).iter_errors(document)]
