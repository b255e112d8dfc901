"""A real, small file system for disk-full tests: a size-limited tmpfs mounted for the test.

The kernel refuses writes on it with ENOSPC exactly as on a full SD card. Mounting needs
root (or CAP_SYS_ADMIN); where that is not possible the tests that need it are skipped with
the reason.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_fs(where: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where`` (created) for the ``with`` block."""
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                          str(where)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a {size}-byte tmpfs at {where} (needs root): "
                    f"{out.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0, chunk: int = 64 * 1024) -> int:
    """Write ``path`` until its file system has about ``leave`` bytes free; returns bytes.

    With ``leave=0`` it writes until the file system refuses (ENOSPC), a byte at a time at
    the end, so nothing is left at all.
    """
    written = 0
    with path.open("ab", buffering=0) as f:
        while True:
            room = free_bytes(path.parent) - leave
            if room <= 0:
                break
            try:
                written += f.write(b"\0" * min(chunk, room)) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if chunk == 1:
                    break
                chunk = max(1, chunk // 16)
    return written
