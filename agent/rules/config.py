"""Configuration of composite rules (``rules:``), and their checks against the rest of the file.

The attributes are the reference's (``shared/reference/composite-events.md``): ``id``,
``name``, ``description``, ``window_seconds``, ``min_events``, ``enabled``, ``group_by``,
``include_label_ids``, ``include_mic_ids``; plus the camera analogue ``include_camera_ids``,
``include_use_cases``, ``cooldown_seconds`` and ``require_labels``. ``docs/rules.md`` gives
their meaning.

Errors name the rule by index and id, then the key: ``rules[2] (glass-burst).min_events: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from agent.events.schema import RuleRef

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

GROUP_BY_FIXED: tuple[str, ...] = (
    "label_id",
    "source_id",
    "label_and_source",
    "device",
    "use_case",
    "none",
)
"""Grouping strategies besides ``metadata.<key>``."""

METADATA_PREFIX = "metadata."

MAX_EVENTS_LIMIT = 10_000
"""The largest ``max_events``: a final message carries every member (about 0.9 KB each)."""

# Strategies whose groups hold a single label: more than one required label can never be met.
_ONE_LABEL_PER_GROUP = frozenset({"label_id", "label_and_source"})


class RuleConfig(BaseModel):
    """One composite rule: which base events count, how they are grouped, how many make one."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="unique rule id; a topic level (.../composite/{id})")
    name: str = Field(default="", description="display name; defaults to the id")
    description: str | None = None
    window_seconds: float = Field(description="events count together within this many seconds")
    min_events: int = Field(description="base events needed to form a composite event")
    enabled: bool = True
    group_by: str = Field(
        default="label_id",
        description="label_id, source_id, label_and_source, device, use_case, metadata.<key>, none",
    )
    include_label_ids: list[str] | None = Field(default=None, description="null: every label")
    include_mic_ids: list[str] | None = Field(
        default=None, description="microphones whose events count (null: all; [] : none)"
    )
    include_camera_ids: list[str] | None = Field(
        default=None, description="cameras whose events count (null: all; [] : none)"
    )
    include_use_cases: list[str] | None = Field(default=None, description="null: every use case")
    cooldown_seconds: float = Field(
        default=0.0, description="after a composite of a group is final, its group rests this long"
    )
    require_labels: list[str] | None = Field(
        default=None, description="every one of these labels must be in the group to form"
    )
    max_events: int | None = Field(
        default=None,
        description="a composite is final once it has this many members (null: 1000); a "
        "final carries them all, so this bounds its size",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("id"), str):
            data = {**data, "name": data["id"]}
        return data

    @field_validator("id")
    @classmethod
    def _topic_safe(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(
                "must be 1-64 characters of letters, digits, '_', '.', '-' (it is a topic level)"
            )
        return value

    @field_validator("window_seconds")
    @classmethod
    def _positive_window(cls, value: float) -> float:
        # Times are compared in whole milliseconds, so a window must hold at least one.
        if not value > 0:
            raise ValueError(f"must be greater than 0 (got {value:g})")
        if value < 0.001:
            raise ValueError(f"must be at least 0.001 (times are in milliseconds; got {value:g})")
        return value

    @field_validator("min_events")
    @classmethod
    def _at_least_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 (got {value})")
        return value

    @field_validator("max_events")
    @classmethod
    def _positive_cap(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_EVENTS_LIMIT:
            raise ValueError(f"must be from 1 to {MAX_EVENTS_LIMIT:,} (got {value})")
        return value

    @field_validator("cooldown_seconds")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError(f"must be 0 or more (got {value:g})")
        return value

    @field_validator("group_by")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value in GROUP_BY_FIXED:
            return value
        if value.startswith(METADATA_PREFIX) and len(value) > len(METADATA_PREFIX):
            return value
        raise ValueError(
            f"unknown grouping strategy {value!r} (use one of "
            f"{', '.join(GROUP_BY_FIXED)}, or metadata.<key>)"
        )

    @model_validator(mode="after")
    def _satisfiable(self) -> RuleConfig:
        required = self.require_labels or []
        if self.include_label_ids is not None:
            excluded = [label for label in required if label not in self.include_label_ids]
            if excluded:
                raise ValueError(
                    f"require_labels: {', '.join(map(repr, excluded))} not in include_label_ids, "
                    "so the rule could never fire"
                )
        if self.max_events is not None and self.max_events < self.min_events:
            raise ValueError(
                f"max_events: {self.max_events} is less than min_events ({self.min_events}), "
                "so a composite would be final as soon as it formed"
            )
        if self.group_by in _ONE_LABEL_PER_GROUP and len(set(required)) > 1:
            raise ValueError(
                f"require_labels: group_by {self.group_by} puts one label in each group, so "
                f"{len(set(required))} required labels could never be met together"
            )
        return self

    @property
    def metadata_key(self) -> str | None:
        """The metadata key of a ``metadata.<key>`` strategy, else None."""
        if self.group_by.startswith(METADATA_PREFIX):
            return self.group_by[len(METADATA_PREFIX):]
        return None

    def to_ref(self) -> RuleRef:
        """The rule as composite events carry it."""
        # Imported here: the event schema pulls in the inference stage's model reference,
        # which reading a configuration file does not need.
        from agent.events.schema import RuleRef

        # ``max_events`` bounds the agent's memory and messages; it is not part of what
        # the rule means, so composites do not carry it.
        return RuleRef(**self.model_dump(exclude={"max_events"}))

    def window_fingerprint(self) -> str:
        """What decides how events are counted; rules equal here can keep their windows."""
        return self.model_dump_json(exclude={"name", "description", "enabled"})


class RulesError(ValueError):
    """Invalid rules; ``lines`` holds one message per problem, each naming the rule and key."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _where(index: int, rule_id: object, key: str | None, root: str) -> str:
    head = f"{root}[{index}]"
    if isinstance(rule_id, str) and rule_id:
        head += f" ({rule_id})"
    return f"{head}.{key}" if key else head


def parse_rules(data: Any, *, root: str = "rules") -> list[RuleConfig]:
    """Validate the ``rules:`` list; raises ``RulesError`` with every problem.

    Lines look like ``rules[2] (glass-burst).min_events: must be at least 1 (got 0)``.
    """
    if data is None:
        return []
    if not isinstance(data, list):
        raise RulesError([f"{root}: must be a list of rules"])
    lines: list[str] = []
    rules: list[RuleConfig] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(data):
        rule_id = item.get("id") if isinstance(item, dict) else None
        try:
            rule = RuleConfig.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                key = ".".join(str(p) for p in err["loc"]) or None
                msg = err["msg"].removeprefix("Value error, ")
                for field in ("require_labels", "max_events"):
                    if key is None and msg.startswith(f"{field}: "):
                        key, msg = field, msg[len(field) + 2:]
                lines.append(f"{_where(index, rule_id, key, root)}: {msg}")
            continue
        if rule.id in first_index:
            lines.append(
                f"{_where(index, rule.id, 'id', root)}: duplicate rule id "
                f"(also {root}[{first_index[rule.id]}])"
            )
            continue
        first_index[rule.id] = index
        rules.append(rule)
    if lines:
        raise RulesError(lines)
    return rules


def check_unique_ids(rules: Sequence[RuleConfig], *, root: str = "rules") -> list[str]:
    """One message per rule whose id an earlier rule already uses."""
    lines = []
    first: dict[str, int] = {}
    for index, rule in enumerate(rules):
        if rule.id in first:
            lines.append(
                f"{_where(index, rule.id, 'id', root)}: duplicate rule id "
                f"(also {root}[{first[rule.id]}])"
            )
        else:
            first[rule.id] = index
    return lines


def validate_rules(
    rules: Sequence[RuleConfig],
    *,
    label_ids: set[str],
    mic_ids: set[str],
    camera_ids: set[str],
    use_cases: set[str],
    root: str = "rules",
) -> list[str]:
    """Problems between the rules and the rest of the configuration, one message each.

    For example ``rules[2] (glass-burst).include_mic_ids: unknown microphone 'mic-9'``.
    Duplicate ids are reported too, so a list built in code gets the same checks as YAML.
    """
    lines = check_unique_ids(rules, root=root)
    checks: tuple[tuple[str, str, set[str]], ...] = (
        ("include_label_ids", "label", label_ids),
        ("require_labels", "label", label_ids),
        ("include_mic_ids", "microphone", mic_ids),
        ("include_camera_ids", "camera", camera_ids),
        ("include_use_cases", "use case", use_cases),
    )
    for index, rule in enumerate(rules):
        for key, what, known in checks:
            values: Iterable[str] | None = getattr(rule, key)
            for value in values or ():
                if value not in known:
                    lines.append(f"{_where(index, rule.id, key, root)}: unknown {what} {value!r}")
    return lines


__all__ = [
    "GROUP_BY_FIXED",
    "RuleConfig",
    "RulesError",
    "check_unique_ids",
    "parse_rules",
    "validate_rules",
]
