"""Composite rules: base events grouped into composite events on the device.

``config`` holds the ``rules:`` section and its checks, ``engine`` the computation (built from
``groups``, ``payload``, ``lifecycle`` and ``persistence``), ``state`` the state file of open
windows, ``dryrun`` the replay of recorded events. Semantics: ``docs/rules.md``.

``RuleEngine`` is imported on first use, so that reading the configuration (``agent.config``,
``check-config``) loads neither the engine nor its SQLite state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules

if TYPE_CHECKING:
    from agent.rules.engine import RuleEngine


def __getattr__(name: str) -> Any:
    if name == "RuleEngine":
        from agent.rules.engine import RuleEngine

        return RuleEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RuleConfig", "RuleEngine", "RulesError", "parse_rules", "validate_rules"]
