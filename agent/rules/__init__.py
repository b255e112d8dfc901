"""Composite rules: base events grouped into composite events on the device.

``config`` holds the ``rules:`` section and its checks, ``engine`` the computation,
``state`` the persistence of open windows, ``dryrun`` the replay of recorded events.
Semantics: ``docs/rules.md``.
"""

from __future__ import annotations

from agent.rules.config import RuleConfig, RulesError, parse_rules, validate_rules
from agent.rules.engine import RuleEngine

__all__ = ["RuleConfig", "RuleEngine", "RulesError", "parse_rules", "validate_rules"]
