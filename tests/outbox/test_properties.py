"""Property: whatever the interleaving of put, claim, ack, release and crashes, the outbox
loses nothing that was put and not acked, never hands out an acked message again, and keeps
the order of each stream."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from agent.outbox import Outbox, OutboxConfig, OutboxMessage

STREAMS = ("cam1", "cam2", "mic")


class OutboxMachine(RuleBasedStateMachine):
    """The outbox against a model: per stream, the list of message ids not yet acked."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-prop-"))
        self.outbox: Outbox | None = None
        self.counter = 0
        self.pending: dict[str, list[int]] = {s: [] for s in STREAMS}  # ids in put order
        self.claimed: dict[int, int] = {}  # outbox key -> id
        self.acked: set[int] = set()

    @initialize(durability=st.sampled_from(["full", "normal"]))
    def open(self, durability: str) -> None:
        self.config = OutboxConfig(path=self.dir / "outbox", durability=durability)  # type: ignore[arg-type]
        self.outbox = Outbox(self.config)

    @property
    def ob(self) -> Outbox:
        assert self.outbox is not None
        return self.outbox

    @staticmethod
    def message(stream: str, ident: int) -> OutboxMessage:
        return OutboxMessage(f"events/{stream}", f"{ident}".encode(), stream)

    @staticmethod
    def ident(message: OutboxMessage) -> int:
        return int(message.payload)

    @rule(stream=st.sampled_from(STREAMS), count=st.integers(1, 3), many=st.booleans())
    def put(self, stream: str, count: int, many: bool) -> None:
        ids = list(range(self.counter, self.counter + count))
        self.counter += count
        messages = [self.message(stream, i) for i in ids]
        if many:
            assert self.ob.put_many(messages)
        else:
            for m in messages:
                assert self.ob.put(m)
        self.pending[stream].extend(ids)

    @rule(limit=st.integers(1, 6))
    def claim(self, limit: int) -> None:
        batch = self.ob.claim(limit)
        unclaimed = {
            s: [i for i in ids if i not in self.claimed.values()] for s, ids in self.pending.items()
        }
        assert len(batch) == min(limit, sum(len(v) for v in unclaimed.values()))
        taken: dict[str, list[int]] = {s: [] for s in STREAMS}
        for key, message in batch:
            ident = self.ident(message)
            assert ident not in self.acked, "an acked message came back"
            assert key not in self.claimed
            assert message == self.message(message.stream, ident)
            taken[message.stream].append(ident)
            self.claimed[key] = ident
        for stream, ids in taken.items():
            # Each stream hands out its oldest unclaimed messages, in put order.
            assert ids == unclaimed[stream][: len(ids)]
        keys = [k for k, _ in batch]
        assert keys == sorted(keys) or len({m.stream for _, m in batch}) > 1

    @precondition(lambda self: bool(self.claimed))
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(sorted(self.claimed)), unique=True, min_size=1))
        self.ob.ack(keys)
        for key in keys:
            ident = self.claimed.pop(key)
            self.acked.add(ident)
            for ids in self.pending.values():
                if ident in ids:
                    ids.remove(ident)

    @precondition(lambda self: bool(self.claimed))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(sorted(self.claimed)), unique=True, min_size=1))
        self.ob.release(keys)
        for key in keys:
            del self.claimed[key]

    @rule(clean=st.booleans())
    def crash(self, clean: bool) -> None:
        """Close (or just abandon, as a crash would) and open again."""
        if clean:
            self.ob.close()
        self.outbox = None  # abandoned without close: nothing more is written
        self.outbox = Outbox(self.config)
        self.claimed.clear()  # everything not acked is claimable again

    @invariant()
    def depth_matches(self) -> None:
        if self.outbox is not None:
            s = self.ob.stats()
            assert s.depth == sum(len(v) for v in self.pending.values())
            assert s.in_flight == len(self.claimed)

    def teardown(self) -> None:
        if self.outbox is not None:
            # Finally everything still pending comes out, once, in order per stream.
            self.ob.release(list(self.claimed))
            got: dict[str, list[int]] = {s: [] for s in STREAMS}
            while batch := self.ob.claim(50):
                self.ob.ack(k for k, _ in batch)
                for _, m in batch:
                    got[m.stream].append(self.ident(m))
            assert got == self.pending
            self.ob.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OutboxMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestOutboxProperties = OutboxMachine.TestCase
