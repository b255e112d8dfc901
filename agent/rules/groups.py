"""A rule's compiled settings and its groups (candidate windows, open composites), in ms."""

from __future__ import annotations

from bisect import insort
from datetime import datetime, timedelta, timezone
from itertools import islice

from agent.events.schema import Event, Label, MetadataValue, RuleRef, SourceRef
from agent.rules.config import RuleConfig

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ONE_MS = timedelta(milliseconds=1)

Item = tuple[int, int, Event]
"""An admitted event: (event time in ms, sequence number, the event without media bytes)."""

RouteKey = tuple[str, str, str, str]
Route = list[tuple["Rule", "Group | None", str, "str | None", int, int]]
"""Per rule an event of a route key counts for: the rule, its group (for fixed group keys),
the group key (the prefix for ``metadata.<key>``), the metadata key, window and bit."""


def to_ms(value: datetime) -> int:
    """An aware datetime as whole milliseconds since the epoch (exact integer arithmetic)."""
    return (value - EPOCH) // ONE_MS


def from_ms(ms: int) -> datetime:
    """Whole milliseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(milliseconds=ms)


def metadata_text(value: MetadataValue) -> str:
    """How a metadata value appears in a group key (booleans as JSON writes them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Group:
    """One group of one rule: idle (candidates) or open (members of one composite)."""

    __slots__ = (
        "cand",
        "cid",
        "cooldown_until",
        "fresh",
        "key",
        "labels",
        "members",
        "newest",
        "parts",
        "published",
        "rule",
        "scanned",
        "started",
        "updated",
    )

    def __init__(self, key: str, rule: Rule) -> None:
        self.key = key
        self.rule = rule
        self.cid: str | None = None
        self.started = 0
        self.newest = 0
        self.updated = 0
        self.members: list[Item] = []  # sorted by (time, seq) while open
        self.cand: list[Item] = []  # a heap by (time, seq) while idle
        self.labels: dict[str, int] = {}  # label counts among candidates (require_labels)
        self.cooldown_until = 0
        # The open composite's microphones, cameras and labels in order of joining; members
        # from ``scanned`` on are not in them yet (gathered when the composite is handed out).
        self.parts: tuple[dict[str, SourceRef], dict[str, SourceRef], dict[str, Label]] = (
            {}, {}, {})
        self.scanned = 0
        self.published: int | None = None  # engine now of the last open payload handed out
        # Members not handed out yet: an open update carries these, not the whole list.
        self.fresh: list[Item] = []

    def empty(self, now: int, window: int) -> bool:
        return self.cid is None and not self.cand and self.cooldown_until + window <= now

    def gather(self) -> None:
        """Bring ``parts`` up to date with the members (in the order they joined)."""
        members = self.members
        if self.scanned >= len(members):
            return
        mics, cameras, labels = self.parts
        for it in islice(members, self.scanned, None):
            event = it[2]
            source = event.source
            source_id = source.id
            if source_id not in mics and source_id not in cameras:
                kind = source.kind
                if kind == "microphone":
                    mics[source_id] = source
                elif kind == "camera":
                    cameras[source_id] = source
            label = event.label
            if label is not None and label.id not in labels:
                labels[label.id] = label
        self.scanned = len(members)

    def join(self, event: Event) -> None:
        """Note a member's source and label for the payload."""
        mics, cameras, labels = self.parts
        source = event.source
        if source.kind == "microphone":
            if source.id not in mics:
                mics[source.id] = source
        elif source.kind == "camera" and source.id not in cameras:
            cameras[source.id] = source
        label = event.label
        if label is not None and label.id not in labels:
            labels[label.id] = label

    def insert_late(self, item: Item) -> None:
        """Add a member older than the newest (a late event), keeping the order of joining."""
        self.gather()
        insort(self.members, item)
        self.fresh.append(item)
        self.scanned = len(self.members)
        self.join(item[2])
        if item[0] < self.started:  # a late event can start the composite earlier
            self.started = item[0]


class Rule:
    """A rule's compiled settings, its groups, track memory and counters."""

    def __init__(self, config: RuleConfig, device_id: str, track_ttl_ms: int, bit: int,
                 default_cap: int) -> None:
        self.default_cap = default_cap  # members of a composite when the rule sets no max_events
        self.groups: dict[str, Group] = {}
        self.tracks: dict[tuple[str, str], int] = {}
        self.active = True
        self.bit = bit  # this rule's bit in the engine's table of live event ids
        self.device_id = device_id
        self.track_ttl_ms = track_ttl_ms
        self.zero_counters()
        self.configure(config)

    def zero_counters(self) -> None:
        self.formed = self.updated = self.finalized = 0
        self.late = self.duplicates = self.repeats = self.suppressed = self.dropped = 0

    def configure(self, config: RuleConfig) -> None:
        self.config = config
        self.id = config.id
        self.ref: RuleRef = config.to_ref()
        self.enabled = config.enabled
        self.fingerprint = config.window_fingerprint()
        self.window = round(config.window_seconds * 1000)
        self.cooldown = round(config.cooldown_seconds * 1000)
        self.min_events = config.min_events
        self.cap = config.max_events or self.default_cap
        self.required: tuple[str, ...] | None = (
            tuple(sorted(set(config.require_labels))) if config.require_labels else None
        )
        self.meta_key = config.metadata_key
        # Track memory lasts at least a window, so a redelivered event is never "first seen".
        self.track_horizon = max(self.track_ttl_ms, self.window)
        self.labels_in = set(config.include_label_ids) if config.include_label_ids is not None \
            else None
        self.mics_in = set(config.include_mic_ids) if config.include_mic_ids is not None else None
        self.cams_in = set(config.include_camera_ids) if config.include_camera_ids is not None \
            else None
        self.use_cases_in = set(config.include_use_cases) \
            if config.include_use_cases is not None else None

    def passes(self, key: RouteKey) -> bool:
        """Whether events with this label, source, kind and use case count for the rule."""
        label_id, source_id, kind, use_case = key
        if self.labels_in is not None and label_id not in self.labels_in:
            return False
        if kind == "microphone" and self.mics_in is not None and source_id not in self.mics_in:
            return False
        if kind == "camera" and self.cams_in is not None and source_id not in self.cams_in:
            return False
        return self.use_cases_in is None or use_case in self.use_cases_in

    def group_key(self, key: RouteKey) -> str:
        """The group key for fixed strategies; the prefix for ``metadata.<key>``."""
        label_id, source_id, _kind, use_case = key
        dev = self.device_id
        strategy = self.config.group_by
        if strategy == "label_id":
            return f"{dev}:{label_id}"
        if strategy == "source_id":
            return f"{dev}:{source_id}"
        if strategy == "label_and_source":
            return f"{dev}:{label_id}:{source_id}"
        if strategy == "use_case":
            return f"{dev}:{use_case}"
        if strategy == "device":
            return dev
        if strategy == "none":
            return f"{dev}:all"
        return f"{dev}:"


__all__ = [
    "EPOCH",
    "ONE_MS",
    "Group",
    "Item",
    "Route",
    "RouteKey",
    "Rule",
    "from_ms",
    "metadata_text",
    "to_ms",
]
