"""scripts/install.sh: shellcheck-clean, and its dry run shows every step without changing
anything (no user, venv, config, unit or prefix appears), for install and for uninstall."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "install.sh"

# What a real install would touch on this machine; a dry run must leave all of it alone.
SYSTEM_PATHS = [
    Path("/opt/edge-agent"),
    Path("/etc/edge-agent"),
    Path("/var/lib/edge-agent"),
    Path("/etc/systemd/system/edge-agent.service"),
    Path("/etc/systemd/system/edge-agent.service.d"),
]
SYSTEM_FILES = [Path("/etc/passwd"), Path("/etc/group")]


def install_sh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "EDGE_AGENT_INSTALL_ROOT"}
    full_env.update(env or {})
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=full_env,
    )


def snapshot() -> dict[str, object]:
    state: dict[str, object] = {str(p): p.exists() for p in SYSTEM_PATHS}
    for f in SYSTEM_FILES:
        state[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else None
    return state


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b""
            for p in sorted(path.rglob("*"))}


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="shellcheck is not installed (scripts/setup.sh --dev installs it)")
def test_shellcheck_is_clean() -> None:
    proc = subprocess.run(["shellcheck", "--severity=style", str(SCRIPT)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_help() -> None:
    proc = install_sh("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: install.sh")
    for option in ("--dry-run", "--uninstall", "--purge", "--prefix", "--no-start",
                   "--ort-wheel"):
        assert option in proc.stdout


@pytest.mark.parametrize("args", [("--bogus",), ("--dry-run", "--prefix"), ("--purge",)])
def test_usage_errors_exit_2_with_a_usage_line(args: tuple[str, ...]) -> None:
    proc = install_sh(*args)
    assert proc.returncode == 2
    assert "usage: install.sh" in proc.stderr
    assert proc.stdout == ""


def test_relative_prefix_is_refused() -> None:
    proc = install_sh("--dry-run", "--prefix", "opt/edge-agent")
    assert proc.returncode != 0
    assert "absolute" in proc.stderr


def test_dry_run_shows_every_step_and_changes_nothing(tmp_path: Path) -> None:
    prefix = tmp_path / "srv" / "agent"  # anything but the default /opt/edge-agent
    before = snapshot()
    proc = install_sh("--dry-run", "--prefix", str(prefix))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout

    assert snapshot() == before
    assert not prefix.exists() and not prefix.parent.exists()
    assert list(tmp_path.iterdir()) == []

    if not Path("/etc/edge-agent/agent.yaml").exists():
        assert "config/starter.yaml /etc/edge-agent/agent.yaml" in out
    if shutil.which("getent") and subprocess.run(["getent", "passwd", "edge-agent"],
                                                 capture_output=True).returncode != 0:
        assert "+ useradd --system" in out and " edge-agent\n" in out
    assert f"-m venv {prefix}/venv" in out
    assert f"+ copy {REPO} to /tmp/edge-agent-src." in out  # pip builds in a copy
    assert f"{prefix}/venv/bin/python -m pip install" in out
    assert f"{prefix}/venv/bin/edge-agent models fetch --dir {prefix}/models" in out
    # The label catalogue travels with the models, or an installed agent has no names.
    assert f"{prefix}/models/labels/" in out and "models/labels/coco.csv" in out
    assert "+ write /etc/systemd/system/edge-agent.service" in out
    # The unit is rendered for the prefix.
    assert f"ExecStart={prefix}/venv/bin/edge-agent run -c" in out
    assert f"EDGE_AGENT_MODELS__DIR={prefix}/models" in out
    assert "/opt/edge-agent" not in out
    assert "+ systemctl enable edge-agent.service" in out


def test_dry_run_keeps_an_existing_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    config = root / "etc" / "edge-agent" / "agent.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("mqtt:\n  host: broker.example\n")
    (config.parent / "mqtt_password").write_text("secret\n")
    before = tree(tmp_path)

    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "opt"),
                      env={"EDGE_AGENT_INSTALL_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert f"keeping the existing {config}" in proc.stdout
    assert "starter.yaml" not in proc.stdout
    # The password file's permissions are enforced (root-only), not its content.
    assert f"+ chmod 0600 {config.parent}/mqtt_password" in proc.stdout
    assert tree(tmp_path) == before


def test_install_root_hook_needs_dry_run(tmp_path: Path) -> None:
    proc = install_sh("--no-start", env={"EDGE_AGENT_INSTALL_ROOT": str(tmp_path)})
    assert proc.returncode != 0
    assert "only with --dry-run" in proc.stderr or "must run as root" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def _installed_layout(tmp_path: Path) -> tuple[Path, Path]:
    """A fake installed system under tmp_path: prefix with venv/models, unit, config, outbox."""
    prefix = tmp_path / "opt"
    root = tmp_path / "root"
    for d in (prefix / "venv" / "bin", prefix / "models", root / "etc" / "edge-agent",
              root / "var" / "lib" / "edge-agent" / "outbox",
              root / "etc" / "systemd" / "system" / "edge-agent.service.d"):
        d.mkdir(parents=True)
    (prefix / "other-software").write_text("not ours\n")
    (root / "etc" / "systemd" / "system" / "edge-agent.service").write_text("[Service]\n")
    (root / "etc" / "systemd" / "system" / "edge-agent.service.d" / "50-jetson.conf").write_text(
        "[Service]\n")
    (root / "etc" / "edge-agent" / "agent.yaml").write_text("{}\n")
    (root / "var" / "lib" / "edge-agent" / "outbox" / "q").write_text("event\n")
    return prefix, root


def test_dry_run_uninstall_lists_removals_and_keeps_config_and_outbox(tmp_path: Path) -> None:
    prefix, root = _installed_layout(tmp_path)
    before, system_before = tree(tmp_path), snapshot()
    proc = install_sh("--dry-run", "--uninstall", "--prefix", str(prefix),
                      env={"EDGE_AGENT_INSTALL_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    unit = root / "etc" / "systemd" / "system" / "edge-agent.service"
    assert "systemctl disable" in out
    assert f"+ rm -f {unit}\n" in out
    assert f"+ rm -f {unit}.d/50-jetson.conf" in out
    assert f"+ rm -rf {prefix}/venv\n" in out
    assert f"+ rm -rf {prefix}/models\n" in out
    assert f"rm -rf {prefix}\n" not in out  # only what install.sh made: other files stay
    assert "user edge-agent" in out or "+ userdel edge-agent" in out
    assert f"Keeping {root}/etc/edge-agent (configuration) and {root}/var/lib/edge-agent" in out
    assert f"rm -rf {root}/etc/edge-agent" not in out
    assert f"rm -rf {root}/var/lib/edge-agent" not in out
    assert tree(tmp_path) == before
    assert snapshot() == system_before


def test_dry_run_purge_also_lists_config_and_outbox(tmp_path: Path) -> None:
    prefix, root = _installed_layout(tmp_path)
    before = tree(tmp_path)
    proc = install_sh("--dry-run", "--uninstall", "--purge", "--prefix", str(prefix),
                      env={"EDGE_AGENT_INSTALL_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    assert f"+ rm -rf {root}/etc/edge-agent\n" in proc.stdout
    assert f"+ rm -rf {root}/var/lib/edge-agent\n" in proc.stdout
    assert tree(tmp_path) == before


def _as_nobody() -> list[str] | None:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


def test_refuses_to_run_without_root_and_says_how() -> None:
    prefix = _as_nobody()
    if prefix is None:
        pytest.skip("running as root and setpriv is missing: cannot drop privileges")
    proc = subprocess.run([*prefix, "bash", str(SCRIPT), "--no-start"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "must run as root" in proc.stderr
    assert f"sudo {SCRIPT} --no-start" in proc.stderr
    # ... while a dry run works unprivileged.
    proc = subprocess.run([*prefix, "bash", str(SCRIPT), "--dry-run", "--no-start"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_systemd_before_252_gets_a_password_file_and_no_fallback(tmp_path: Path) -> None:
    """JetPack 6 (systemd 249): nothing may depend on the SetCredential= fallback."""
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "systemd 249 (249.11-0ubuntu3)"\n'
                    "exit 0\n")
    fake.chmod(0o755)
    root = tmp_path / "root"
    root.mkdir()
    before = tree(tmp_path)
    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "opt"),
                      env={"EDGE_AGENT_INSTALL_ROOT": str(root),
                           "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"+ write {root}/etc/edge-agent/mqtt_password (mode 0600, owner root:root)" in out
    dropin = f"{root}/etc/systemd/system/edge-agent.service.d/10-credential.conf"
    assert f"+ write {dropin}" in out
    written = out.split(f"+ write {dropin}", 1)[1].split("\n")[1:3]
    assert [line.strip() for line in written] == ["| [Service]", "| SetCredential="]
    assert tree(tmp_path) == before

    # systemd 252 (Raspberry Pi OS bookworm) relies on the fallback and writes neither.
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "systemd 252 (252.38-1)"\nexit 0\n')
    proc = install_sh("--dry-run", "--prefix", str(tmp_path / "opt"),
                      env={"EDGE_AGENT_INSTALL_ROOT": str(root),
                           "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    assert "mqtt_password (mode" not in proc.stdout
    assert "10-credential.conf" not in proc.stdout
