"""Private state on disk: directories 0700 and database files 0600, whatever the umask.

The outbox and the rules state hold events, snapshots and clips. Under the unit the umask is
0077, but an agent run by hand inherits the caller's (022 makes them world-readable, 000
world-writable), so the places that create them set the modes themselves.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700. An existing directory of ours loses
    group write and every permission for others (a service group may keep reading)."""
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)  # mkdir's mode is masked by the umask
    if not missing:
        _tighten(path, 0o027)


def private_file(path: Path, create: bool = True) -> None:
    """Make ``path`` 0600, creating it empty when ``create`` (SQLite takes an empty file as
    a new database and gives its -wal and -shm files the same mode)."""
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
    _tighten(path, 0o077)


def _tighten(path: Path, remove: int) -> None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    if info.st_uid == os.geteuid() and info.st_mode & remove:
        os.chmod(path, info.st_mode & 0o7777 & ~remove)
