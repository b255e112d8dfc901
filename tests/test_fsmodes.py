"""The agent's state is private whatever the caller's umask: directories 0700, files 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.outbox.config import OutboxConfig
from agent.outbox.store import Outbox, OutboxMessage
from agent.rules.state import RuleStore


@pytest.fixture(params=[0o000, 0o022], ids=["umask000", "umask022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outbox_directory_and_files_are_private(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "state" / "outbox"  # the parent is created too
    with Outbox(OutboxConfig(path=path)) as outbox:
        outbox.put_many([OutboxMessage("t", b"event", "s")])
        files = sorted(p.name for p in path.iterdir())
        assert "outbox.db-wal" in files, files
        for p in path.iterdir():
            assert mode(p) == 0o600, (p.name, oct(mode(p)))
    assert mode(path) == 0o700
    assert mode(path.parent) == 0o700


def test_rules_state_directory_and_files_are_private(tmp_path: Path, umask: int) -> None:
    store = RuleStore(tmp_path / "rules-state")
    try:
        assert mode(tmp_path / "rules-state") == 0o700
        for p in (tmp_path / "rules-state").iterdir():
            assert mode(p) == 0o600, (p.name, oct(mode(p)))
    finally:
        store.close()


def test_files_left_world_readable_by_an_older_run_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "outbox"
    with Outbox(OutboxConfig(path=path)):
        pass
    os.chmod(path, 0o777)
    os.chmod(path / "outbox.db", 0o644)
    with Outbox(OutboxConfig(path=path)):
        assert mode(path / "outbox.db") == 0o600
    assert mode(path) & 0o027 == 0
