"""Shared fixtures: a real Mosquitto broker and a recording subscriber; a JACK registry
without the leftovers of earlier runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.harness.agent_process import AgentProcess
from scripts.harness.broker import MOSQUITTO, Broker, Recorder
from scripts.harness.jack import reclaim_stale_servers


def pytest_configure(config: pytest.Config) -> None:
    # Before any test loads PortAudio: the audio tests kill JACK servers on purpose, and
    # the slots those leave in JACK's registry would fill it after a few runs.
    reclaim_stale_servers()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A mosquitto on a free loopback port, stopped after the test."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (scripts/test.sh installs it as root)")
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def recorder(broker: Broker) -> Iterator[Callable[..., Recorder]]:
    """Factory: ``recorder("edge-agent/#")`` subscribes and records everything."""
    made: list[Recorder] = []

    def make(*topics: str) -> Recorder:
        r = Recorder(broker, list(topics) or ["#"])
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    """Agent processes a test starts; any still running are killed afterwards."""
    made: list[AgentProcess] = []
    yield made
    for agent in made:
        agent.close()
