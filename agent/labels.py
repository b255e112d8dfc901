"""The label catalogue: stable ids and English/Korean names for the classes models report.

Two catalogues ship in ``models/labels/`` (see its README): ``coco.csv`` (the 80 COCO
classes in Darknet/YOLO class-index order) and ``audioset.csv`` (the 521 AudioSet classes in
YAMNet output order). Models map a class index to a :class:`LabelInfo`; events carry it as an
:class:`agent.events.schema.Label` (built by the pipeline: this module sits below the events
stage, which it does not import).

A user's own model brings a label file (one English name a line); :meth:`LabelCatalogue.from_names`
matches its names to catalogue entries so that known classes get their Korean names, and
per-label name overrides from the configuration go through
:meth:`LabelCatalogue.with_overrides`.

The catalogue is loaded once at startup with the ``csv`` module (601 rows, a few
milliseconds) and is immutable afterwards.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from agent.paths import REPO_ROOT

logger = logging.getLogger(__name__)

CatalogueName = Literal["coco", "audioset"]
CATALOGUES: tuple[CatalogueName, ...] = get_args(CatalogueName)
"""Catalogue names in lookup order: :meth:`LabelCatalogue.find` tries ``coco`` first."""

_COLUMNS: dict[CatalogueName, tuple[str, ...]] = {
    "coco": ("index", "id", "en", "ko"),
    "audioset": ("index", "mid", "id", "en", "ko"),
}

SLUG_RE = re.compile(r"[a-z0-9]+(?:_[a-z0-9]+)*")
"""What an id looks like: lower-case ASCII words joined by single underscores."""

_OVERRIDE_FIELDS = frozenset({"en", "ko"})

# Ultralytics (and the COCO annotations) name six Darknet classes differently; a label file
# exported with a YOLOv5/v8/v11 model uses these names, so they match the Darknet entries.
COCO_ALIASES: Mapping[str, str] = {
    "motorcycle": "motorbike",
    "airplane": "aeroplane",
    "couch": "sofa",
    "potted plant": "pottedplant",
    "dining table": "diningtable",
    "tv": "tvmonitor",
    "hair dryer": "hair_drier",
}
"""Alternative English names of COCO classes, mapped to the catalogue's ids."""


class LabelCatalogueError(Exception):
    """A label catalogue or label file is missing, unreadable or malformed.

    The message names the file (and the line, where one is at fault).
    """


def slugify(name: str) -> str:
    """A stable snake_case ASCII id for a display name.

    ``"Vehicle horn, car horn, honking"`` -> ``vehicle_horn_car_horn_honking``,
    ``"Dental drill, dentist's drill"`` -> ``dental_drill_dentists_drill``. Accents are
    dropped (``"Café"`` -> ``cafe``). A name without any ASCII letter or digit (``"유리"``)
    gets ``label_`` plus the first 8 hex digits of its SHA-1, so it still has a stable id.
    """
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    text = text.lower().replace("'", "").replace("&", " and ")
    slug = re.sub(r"[^a-z0-9]+", "_", text).strip("_")
    if slug:
        return slug
    return "label_" + hashlib.sha1(name.strip().encode("utf-8")).hexdigest()[:8]


def _name_key(name: str) -> str:
    """Case- and spacing-insensitive form of an English name, for matching."""
    return " ".join(name.split()).casefold()


@dataclass(frozen=True, slots=True)
class LabelInfo:
    """One class of a model: stable id, display names, class index and AudioSet machine id.

    ``index`` is the class index in the model's output (for entries from
    :meth:`LabelCatalogue.from_names`, the line's position in the user's label file).
    ``mid`` is the AudioSet ontology id (``/m/09x0r``) for AudioSet classes, else ``None``.
    """

    id: str
    en: str
    ko: str
    index: int
    mid: str | None = None


def default_labels_dir() -> Path:
    """``<repo>/models/labels``, where the catalogue ships."""
    return REPO_ROOT / "models" / "labels"


_INDEXED_LINE = re.compile(r"^(?P<index>\d+)\s*(?::\s*|\s+)(?P<name>\S.*)$")


def _unquote(name: str) -> str:
    """``'traffic light'`` -> ``traffic light`` (YAML-style names are often quoted)."""
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return name[1:-1].strip()
    return name


def load_label_file(path: Path) -> list[str]:
    """The names in a label file, by class index; the one reader for every model.

    Accepted forms, one class a line:

    - ``person``: the line's position is the class index (a Darknet ``coco.names``);
    - ``0 person``: an index, blanks, the name;
    - ``0: person`` (or ``0: 'traffic light'``): an Ultralytics ``names:`` entry.

    Blank lines, ``#`` comment lines and a UTF-8 byte-order mark are skipped; surrounding
    whitespace is stripped. The indexed forms are used only when every line has an index
    (``3d printer`` alone is a name); their indices must then be 0, 1, 2... with no gap or
    repeat, in any order. Raises :class:`LabelCatalogueError` naming the file (and the line)
    when it cannot be read, holds no names or has a bad index.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelCatalogueError(f"label file {path}: cannot read it: {exc}") from exc
    lines = [(no, line.strip()) for no, line in enumerate(text.splitlines(), start=1)]
    lines = [(no, line) for no, line in lines if line and not line.startswith("#")]
    if not lines:
        raise LabelCatalogueError(f"label file {path}: holds no label names")
    matches = [_INDEXED_LINE.match(line) for _, line in lines]
    if not all(matches):
        return [_unquote(line) for _, line in lines]
    by_index: dict[int, str] = {}
    for (no, _), match in zip(lines, matches, strict=True):
        assert match is not None
        index = int(match["index"])
        if index in by_index:
            raise LabelCatalogueError(f"label file {path} line {no}: index {index} is repeated")
        by_index[index] = _unquote(match["name"].strip())
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing:
        raise LabelCatalogueError(
            f"label file {path}: indices must run 0..{len(by_index) - 1} without gaps; "
            f"missing {', '.join(map(str, missing[:5]))}"
        )
    return [by_index[i] for i in range(len(by_index))]


def _read_catalogue(path: Path, which: CatalogueName) -> tuple[LabelInfo, ...]:
    """Read and validate one catalogue CSV; every problem names the file and line."""
    columns = _COLUMNS[which]
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle, strict=True))
    except FileNotFoundError as exc:
        raise LabelCatalogueError(
            f"label catalogue {path} does not exist (expected in {path.parent}: "
            + ", ".join(f"{name}.csv" for name in CATALOGUES)
            + ")"
        ) from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelCatalogueError(f"label catalogue {path}: cannot read it: {exc}") from exc

    if not rows or tuple(rows[0]) != columns:
        found = ",".join(rows[0]) if rows else "nothing"
        raise LabelCatalogueError(
            f"label catalogue {path}: header must be {','.join(columns)}, found {found}"
        )
    entries: list[LabelInfo] = []
    seen: dict[str, int] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        where = f"label catalogue {path} line {line_no}"
        if len(row) != len(columns):
            raise LabelCatalogueError(f"{where}: expected {len(columns)} cells, found {len(row)}")
        cells = dict(zip(columns, (cell.strip() for cell in row), strict=True))
        empty = [column for column, value in cells.items() if not value]
        if empty:
            raise LabelCatalogueError(f"{where}: empty cell(s): {', '.join(empty)}")
        expected_index = len(entries)
        if cells["index"] != str(expected_index):
            raise LabelCatalogueError(
                f"{where}: index must be {expected_index} (rows in class order, no gaps), "
                f"found {cells['index']!r}"
            )
        label_id = cells["id"]
        if not SLUG_RE.fullmatch(label_id):
            raise LabelCatalogueError(f"{where}: id {label_id!r} is not a snake_case slug")
        if label_id in seen:
            raise LabelCatalogueError(
                f"{where}: id {label_id!r} already used on line {seen[label_id]}"
            )
        seen[label_id] = line_no
        mid = cells.get("mid")
        if mid is not None and not mid.startswith("/"):
            raise LabelCatalogueError(f"{where}: mid {mid!r} is not an AudioSet id like /m/09x0r")
        entries.append(
            LabelInfo(id=label_id, en=cells["en"], ko=cells["ko"], index=expected_index, mid=mid)
        )
    if not entries:
        raise LabelCatalogueError(f"label catalogue {path}: has a header but no rows")
    return tuple(entries)


def _renamed(info: LabelInfo, names: Mapping[str, str]) -> LabelInfo:
    """``info`` with the ``en``/``ko`` names given in ``names`` (an override) replaced."""
    if not names:
        return info
    return dataclasses.replace(info, en=names.get("en", info.en), ko=names.get("ko", info.ko))


def _check_overrides(
    overrides: Mapping[str, Mapping[str, str]],
) -> dict[str, dict[str, str]]:
    """Validate override entries; a copy with names stripped."""
    checked: dict[str, dict[str, str]] = {}
    for key, names in overrides.items():
        unknown = set(names) - _OVERRIDE_FIELDS
        if unknown:
            raise ValueError(
                f"label override {key!r}: unknown field(s) {', '.join(sorted(unknown))}; "
                "only 'en' and 'ko' can be overridden"
            )
        fields: dict[str, str] = {}
        for field, value in names.items():
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"label override {key!r}: {field} must be a non-empty string")
            fields[field] = value.strip()
        checked[key] = fields
    return checked


class LabelCatalogue:
    """The COCO and AudioSet label catalogues, with optional per-label name overrides.

    Immutable: :meth:`with_overrides` returns a new catalogue. Ids are unique within a
    catalogue; the same id may appear in both (``dog``), as they are separate catalogues.
    """

    def __init__(
        self,
        coco: Sequence[LabelInfo],
        audioset: Sequence[LabelInfo],
        *,
        overrides: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """Build from entries in class-index order; ``overrides`` as in :meth:`with_overrides`."""
        self._base: dict[CatalogueName, tuple[LabelInfo, ...]] = {
            "coco": tuple(coco),
            "audioset": tuple(audioset),
        }
        self._overrides = _check_overrides(overrides or {})
        self._entries: dict[CatalogueName, tuple[LabelInfo, ...]] = {
            which: tuple(self._apply(which, info) for info in infos)
            for which, infos in self._base.items()
        }
        self._by_id: dict[CatalogueName, dict[str, LabelInfo]] = {}
        self._by_name: dict[CatalogueName, dict[str, LabelInfo]] = {}
        for which, infos in self._entries.items():
            by_id: dict[str, LabelInfo] = {}
            for info in infos:
                if info.id in by_id:
                    raise ValueError(f"{which} catalogue: duplicate label id {info.id!r}")
                by_id[info.id] = info
            self._by_id[which] = by_id
            # Match user names against the shipped English names, not overridden ones, so
            # that renaming a label for display does not break a model's label file.
            by_name: dict[str, LabelInfo] = {}
            for base in self._base[which]:
                by_name.setdefault(_name_key(base.en), by_id[base.id])
            self._by_name[which] = by_name

    def _apply(self, which: CatalogueName, info: LabelInfo) -> LabelInfo:
        names = {
            **self._overrides.get(info.id, {}),
            **self._overrides.get(f"{which}:{info.id}", {}),
        }
        return _renamed(info, names)

    @classmethod
    def load(cls, labels_dir: Path | None = None) -> LabelCatalogue:
        """Read ``coco.csv`` and ``audioset.csv`` from ``labels_dir`` (default: the repo's).

        Raises :class:`LabelCatalogueError` naming the directory or file that is missing or
        malformed.
        """
        directory = labels_dir if labels_dir is not None else default_labels_dir()
        if not directory.is_dir():
            raise LabelCatalogueError(
                f"label catalogue directory {directory} does not exist "
                f"(it should hold {', '.join(f'{name}.csv' for name in CATALOGUES)})"
            )
        coco = _read_catalogue(directory / "coco.csv", "coco")
        audioset = _read_catalogue(directory / "audioset.csv", "audioset")
        logger.debug(
            "label catalogue %s: %d COCO and %d AudioSet labels",
            directory,
            len(coco),
            len(audioset),
        )
        return cls(coco, audioset)

    def coco(self) -> list[LabelInfo]:
        """The COCO classes in class-index order (Darknet/YOLO order)."""
        return list(self._entries["coco"])

    def audioset(self) -> list[LabelInfo]:
        """The AudioSet classes in YAMNet output order."""
        return list(self._entries["audioset"])

    def get(self, catalogue: CatalogueName, label_id: str) -> LabelInfo | None:
        """The entry with ``label_id`` in one catalogue, or ``None``."""
        if catalogue not in self._by_id:
            raise ValueError(
                f"unknown label catalogue {catalogue!r}; expected one of {', '.join(CATALOGUES)}"
            )
        return self._by_id[catalogue].get(label_id)

    def find(self, label_id: str) -> LabelInfo | None:
        """The entry with ``label_id`` in ``coco``, else in ``audioset``, else ``None``."""
        for which in CATALOGUES:
            info = self._by_id[which].get(label_id)
            if info is not None:
                return info
        return None

    def known_ids(self) -> set[str]:
        """Every id in either catalogue."""
        return {label_id for by_id in self._by_id.values() for label_id in by_id}

    def _match(self, name: str, catalogues: Sequence[CatalogueName]) -> LabelInfo | None:
        """A catalogue entry for a user's name: by id, English name, slug or COCO alias."""
        key = _name_key(name)
        slug = slugify(name)
        # Exhaust one catalogue before the next, so that a YOLO label file's "hair dryer"
        # finds the COCO class by alias rather than the AudioSet sound by name.
        for which in catalogues:
            by_id = self._by_id[which]
            info = by_id.get(name) or self._by_name[which].get(key) or by_id.get(slug)
            if info is None and which == "coco" and key in COCO_ALIASES:
                info = by_id.get(COCO_ALIASES[key])
            if info is not None:
                return info
        return None

    def from_names(
        self, names: Iterable[str], catalogue: CatalogueName | None = None
    ) -> list[LabelInfo]:
        """Labels for a user's label file, one per name, ``index`` = position in ``names``.

        Each name is matched to a catalogue entry by id, by case-insensitive English name,
        or by its slug (``catalogue`` restricts the search; by default ``coco`` is tried
        before ``audioset``, so ``"Mouse"`` is the computer mouse). A known name takes the
        entry's id and (possibly overridden) names. An unknown name gets ``id=slugify(name)``
        and the name itself as both ``en`` and ``ko``, unless an override for that id names
        it.
        """
        catalogues: Sequence[CatalogueName] = CATALOGUES if catalogue is None else (catalogue,)
        for which in catalogues:
            if which not in self._by_id:
                raise ValueError(
                    f"unknown label catalogue {which!r}; expected one of {', '.join(CATALOGUES)}"
                )
        result: list[LabelInfo] = []
        unknown: list[str] = []
        for index, raw in enumerate(names):
            name = raw.strip()
            if not name:
                raise ValueError(f"label name at position {index} is empty")
            info = self._match(name, catalogues)
            if info is None:
                unknown.append(name)
                label_id = slugify(name)
                info = LabelInfo(id=label_id, en=name, ko=name, index=index)
                info = _renamed(info, self._overrides.get(label_id, {}))
            result.append(dataclasses.replace(info, index=index))
        if unknown:
            logger.info(
                "%d label name(s) not in the catalogue, shown as written (Korean names can be "
                "set with label overrides): %s",
                len(unknown),
                ", ".join(unknown[:10]) + (", ..." if len(unknown) > 10 else ""),
            )
        return result

    def with_overrides(self, overrides: Mapping[str, Mapping[str, str]]) -> LabelCatalogue:
        """A catalogue with display names replaced: ``{label_id: {"en": ..., "ko": ...}}``.

        Either name may be left out. A key applies to that id in both catalogues;
        ``"coco:mouse"`` or ``"audioset:mouse"`` limits it to one. Keys that match no
        catalogue entry are kept for :meth:`from_names` (a custom model's own labels).
        Overrides add to earlier ones; a later one wins per name.
        """
        merged = {key: dict(names) for key, names in self._overrides.items()}
        for key, names in _check_overrides(overrides).items():
            merged.setdefault(key, {}).update(names)
        return LabelCatalogue(self._base["coco"], self._base["audioset"], overrides=merged)
