"""Where the repository's own files are: the default models folder and label catalogue."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout (or the installed package's parent): ``models/`` under it is the default
``models.dir``."""
