"""The JSON payloads runtime commands take, validated all or nothing before anything runs."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Dbfs = Annotated[float, Field(ge=-120.0, le=0.0, allow_inf_nan=False)]
LabelId = Annotated[str, Field(min_length=1, max_length=128)]


class Payload(BaseModel):
    """Fields every command takes. Strict: ``"true"`` is not a bool, ``"0.5"`` not a number."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    request_id: Annotated[str, Field(max_length=128)] | int | None = None


class MediaGetPayload(Payload):
    """``{"event_id": "...", "role": "annotated"}``: one role, or every role without it."""

    event_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    role: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")] | \
        None = None


class EnabledPayload(Payload):
    """``{"enabled": false}``: detection of a source, or a rule."""

    enabled: bool


class LabelThresholds(BaseModel):
    """One label's thresholds (cameras: ``threshold``, ``min_score``; microphones:
    ``threshold``, ``min_volume``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    threshold: Unit | None = None
    min_score: Unit | None = None
    min_volume: Dbfs | None = None

    @model_validator(mode="after")
    def _something(self) -> LabelThresholds:
        if self.threshold is None and self.min_score is None and self.min_volume is None:
            raise ValueError("give at least one of threshold, min_score, min_volume")
        return self


class ThresholdsPayload(Payload):
    """New thresholds for a source; only what is given changes."""

    threshold: Unit | None = None
    min_volume: Dbfs | None = None
    labels: dict[LabelId, LabelThresholds] = Field(default_factory=dict, max_length=256)

    @model_validator(mode="after")
    def _something(self) -> ThresholdsPayload:
        if self.threshold is None and self.min_volume is None and not self.labels:
            raise ValueError("give threshold, min_volume or labels")
        return self

    def changes(self) -> dict[str, Any]:
        """What ``worker.set_thresholds`` receives: the given values only."""
        out: dict[str, Any] = {}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.min_volume is not None:
            out["min_volume"] = self.min_volume
        if self.labels:
            out["labels"] = {k: v.model_dump(exclude_none=True) for k, v in self.labels.items()}
        return out


# Keys each source kind takes; a key the kind does not have is an error, not ignored.
THRESHOLD_KEYS = {
    "camera": ({"labels"}, {"threshold", "min_score"}),
    "microphone": ({"threshold", "min_volume", "labels"}, {"threshold", "min_volume"}),
}


def describe_errors(exc: ValidationError) -> str:
    """Pydantic's errors in one line: ``labels.person.threshold: Input should be ...``."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)
