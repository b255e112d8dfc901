"""Rule configuration: every invalid rule is rejected with the rule and the key named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules

REPO = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {"id": "glass-burst", "window_seconds": 30, "min_events": 3}


def _errors(*rules: dict[str, object]) -> list[str]:
    with pytest.raises(RulesError) as caught:
        parse_rules(list(rules))
    return caught.value.lines


def test_reference_attributes_parse_and_name_defaults_to_id() -> None:
    [rule] = parse_rules([{**GOOD, "include_mic_ids": ["mic-1"], "group_by": "label_id"}])
    assert rule.name == "glass-burst"
    assert rule.enabled is True
    ref = rule.to_ref()
    assert ref.include_mic_ids == ["mic-1"]
    assert ref.min_events == 3


@pytest.mark.parametrize(
    ("change", "key", "fragment"),
    [
        ({"min_events": 0}, "min_events", "at least 1"),
        ({"window_seconds": 0}, "window_seconds", "greater than 0"),
        ({"window_seconds": -5}, "window_seconds", "greater than 0"),
        ({"group_by": "colour"}, "group_by", "unknown grouping strategy 'colour'"),
        ({"group_by": "metadata."}, "group_by", "unknown grouping strategy"),
        ({"cooldown_seconds": -1}, "cooldown_seconds", "0 or more"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"require_labels": ["glass"], "include_label_ids": ["person"]}, "require_labels",
         "never fire"),
        ({"require_labels": ["glass", "person"]}, "require_labels", "one label in each group"),
    ],
)
def test_invalid_rule_names_rule_and_key(change: dict[str, object], key: str,
                                          fragment: str) -> None:
    lines = _errors(GOOD, {**GOOD, "id": "second", **change})
    assert len(lines) == 1
    assert lines[0].startswith(f"rules[1] (second).{key}: ")
    assert fragment in lines[0]


def test_duplicate_ids_are_rejected() -> None:
    lines = _errors(GOOD, {**GOOD, "min_events": 2}, GOOD)
    assert lines == [
        "rules[1] (glass-burst).id: duplicate rule id (also rules[0])",
        "rules[2] (glass-burst).id: duplicate rule id (also rules[0])",
    ]


def test_every_problem_is_reported() -> None:
    lines = _errors({**GOOD, "min_events": 0, "group_by": "x"}, {"id": "b", "min_events": 1})
    assert [line.split(":")[0] for line in lines] == [
        "rules[0] (glass-burst).min_events",
        "rules[0] (glass-burst).group_by",
        "rules[1] (b).window_seconds",
    ]


def test_validate_rules_against_the_configuration() -> None:
    rules = [
        RuleConfig(**GOOD),
        RuleConfig(id="a", window_seconds=5, min_events=1, include_label_ids=["glass", "cat"]),
        RuleConfig(id="glass-b", window_seconds=5, min_events=1, include_mic_ids=["mic-9"],
                   include_camera_ids=["cam-1", "cam-7"], include_use_cases=["nope"],
                   require_labels=["unicorn"], group_by="device"),
    ]
    lines = validate_rules(rules, label_ids={"glass", "person"}, mic_ids={"mic-1"},
                           camera_ids={"cam-1"}, use_cases={"default"})
    assert lines == [
        "rules[1] (a).include_label_ids: unknown label 'cat'",
        "rules[2] (glass-b).require_labels: unknown label 'unicorn'",
        "rules[2] (glass-b).include_mic_ids: unknown microphone 'mic-9'",
        "rules[2] (glass-b).include_camera_ids: unknown camera 'cam-7'",
        "rules[2] (glass-b).include_use_cases: unknown use case 'nope'",
    ]


def test_validate_rules_reports_duplicates_built_in_code() -> None:
    rules = [RuleConfig(**GOOD), RuleConfig(**GOOD)]
    assert validate_rules(rules, label_ids=set(), mic_ids=set(), camera_ids=set(),
                          use_cases=set()) == [
        "rules[1] (glass-burst).id: duplicate rule id (also rules[0])"]


def test_reading_rules_loads_neither_the_engine_nor_its_state_file() -> None:
    # A fresh interpreter: in this one, other tests have long imported the engine.
    heavy = ("agent.rules.engine", "agent.rules.lifecycle", "agent.rules.state", "sqlite3",
             "agent.events.schema", "agent.inference.session")
    code = (
        "import json, sys\n"
        "from agent.rules import RuleConfig, RulesError, parse_rules, validate_rules\n"
        "parse_rules([{'id': 'a', 'window_seconds': 5, 'min_events': 2}])\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_the_engine_is_still_importable_from_the_package() -> None:
    from agent.rules import RuleEngine
    from agent.rules.engine import RuleEngine as from_engine

    assert RuleEngine is from_engine


@pytest.mark.parametrize(("value", "message"), [
    (0, "rules[0] (r).max_events: must be from 1 to 10,000 (got 0)"),
    (10_001, "rules[0] (r).max_events: must be from 1 to 10,000 (got 10001)"),
    (2, "rules[0] (r).max_events: 2 is less than min_events (3), so a composite would be "
        "final as soon as it formed"),
])
def test_max_events_out_of_range_names_the_rule_and_key(value: int, message: str) -> None:
    with pytest.raises(RulesError) as err:
        parse_rules([{"id": "r", "window_seconds": 5, "min_events": 3, "max_events": value}])
    assert err.value.lines == [message]
