"""Benchmark sections run by ``scripts/bench.py``.

Each module has ``run(workdir: Path, quick: bool) -> list[Row]``; every row puts a figure
beside its reference measured in the same run, on the same machine and disk.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass
class Row:
    """One line of the benchmark table."""

    section: str
    name: str
    value: float
    unit: str
    reference_name: str | None = None
    reference_value: float | None = None
    target: str | None = None
    ok: bool | None = None
    note: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.reference_value in (None, 0):
            return None
        return self.value / self.reference_value  # type: ignore[operator]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ratio"] = self.ratio
        return d


class _Runnable(Protocol):
    def start(self) -> None: ...
    def stop(self, timeout: float = ...) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def worker_cpu_share(worker: _Runnable, seconds: float, warmup: float
                     ) -> tuple[float, dict[str, Any]]:
    """% of one core this process used while ``worker`` ran ``seconds`` after ``warmup``.

    The warm-up skips start-up costs (opening the source, the model's first, slow run).
    """
    worker.start()
    time.sleep(warmup)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    stats = worker.stats()
    worker.stop()
    return 100.0 * cpu / wall, stats
