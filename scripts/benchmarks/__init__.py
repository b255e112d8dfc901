"""Benchmark sections run by ``scripts/bench.py``.

Each module has ``run(workdir: Path, quick: bool) -> list[Row]``; every row puts a figure
beside its reference measured in the same run, on the same machine and disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


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
