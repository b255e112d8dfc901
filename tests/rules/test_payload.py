"""Every composite message of a random run matches the strict published JSON Schema."""

from __future__ import annotations

import json
import random
from pathlib import Path

from agent.rules.config import GROUP_BY_FIXED
from tests.events.strict import problems
from tests.rules.helpers import LABELS, SOURCES, Driver, make_event, rule


def test_every_composite_of_a_random_run_matches_the_strict_schema(tmp_path: Path) -> None:
    rng = random.Random(15)
    strategies = [*GROUP_BY_FIXED, "metadata.zone"]
    rules = [
        rule(f"r{i}", window_seconds=rng.choice([0.5, 2, 10]), min_events=rng.randint(1, 3),
             group_by=strategies[i % len(strategies)],
             cooldown_seconds=rng.choice([0, 0, 3]),
             require_labels=["glass", "person"] if i == 3 else None)
        for i in range(8)
    ]
    d = Driver(rules, tmp_path, max_events_per_composite=6, update_interval_seconds=0.5)
    clock = 0
    for n in range(2_000):
        clock += rng.choice([0, 10, 100, 400, 1500])
        d.at(clock)
        step = rng.random()
        if step < 0.01:
            d.restart()
        elif step < 0.03:
            d.tick()
        elif step < 0.04:
            r = rng.choice(rules)
            d.engine.set_enabled(r.id, rng.random() < 0.5)
        else:
            track = rng.choice([None, None, "t1", "t2", f"t{n}"])
            d.process(make_event(
                rng.randrange(n + 1) if rng.random() < 0.05 else n,  # some copies
                clock - rng.choice([0, 0, 300, 3000]),
                label=rng.choice(sorted(LABELS)), source=rng.choice(sorted(SOURCES)),
                metadata=rng.choice([{}, {"zone": "a"}, {"zone": 7}, {"zone": True}]),
                track_id=track, phase=None if track is None else rng.choice(["new", "update"]),
            ))
    d.at(clock + 60_000)
    d.tick()
    assert len({c.id for c in d.emitted}) > 100
    assert {c.status for c in d.emitted} == {"open", "final"}
    for composite in d.emitted:
        found = problems("composite-event.schema.json", json.loads(composite.to_json()))
        assert found == [], (composite.id, found[:5])
