"""The architecture contract in pyproject.toml ([tool.importlinter]) holds, and it bites.

scripts/test.sh runs ``lint-imports`` before pytest; these tests keep the same check in the
suite and show that an upward import or a cycle is caught, on a copy of the package.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "agent", tmp_path / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")


def test_the_package_keeps_its_contracts(tmp_path: Path) -> None:
    done = _lint(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    # The outbox (low) learning about the MQTT stage (above it).
    _append(root / "agent" / "outbox" / "summary.py", "import agent.mqtt.config  # noqa")
    done = _lint(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Layers: cli, daemon, config, then the stages, then the shared modules BROKEN" \
        in done.stdout
    assert "agent.outbox.summary -> agent.mqtt.config" in done.stdout


def test_a_cycle_inside_a_stage_is_caught(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    # The ONNX session wrapper importing the model loader, which imports it: one layer, a loop.
    _append(root / "agent" / "inference" / "session.py", "import agent.inference.loader  # noqa")
    done = _lint(root)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No import cycles between the modules of a package BROKEN" in done.stdout
    assert "Layers: cli, daemon, config, then the stages, then the shared modules KEPT" \
        in done.stdout


def test_neither_the_agent_nor_the_scripts_import_the_test_tree() -> None:
    # What the scripts share with the tests (broker, agent process, ONNX graphs) lives in
    # scripts/harness; the demo and the benchmarks run from a checkout without tests/.
    found = []
    for path in sorted([*(REPO / "agent").rglob("*.py"), *(REPO / "scripts").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(REPO)}: {n}" for n in names
                      if n == "tests" or n.startswith("tests.")]
    assert found == []
