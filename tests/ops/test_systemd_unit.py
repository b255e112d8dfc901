"""systemd/edge-agent.service: it loads without a warning, keeps its promises to the agent
(notify, watchdog, directories, credential, devices) and stays hardened (exposure <= 2.0)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "edge-agent.service"
PREFIX = "/opt/edge-agent"
MAX_EXPOSURE = 2.0

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (Debian: apt-get install systemd)",
)

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Section -> key -> every value, in order (systemd keys may repeat)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = unit.setdefault(line.strip("[]"), {})
            continue
        assert section is not None, f"setting outside a section: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return parse_unit(UNIT.read_text())["Service"]


def one(service: dict[str, list[str]], key: str) -> str:
    values = service.get(key, [])
    assert len(values) == 1, f"{key}= should be set exactly once, found {values}"
    return values[0]


def render(tmp_path: Path, text: str) -> Path:
    """The unit as install.sh writes it for --prefix, with a stub edge-agent that exists.

    ``systemd-analyze verify`` checks that ExecStart= points to an executable; the real one
    lives in /opt/edge-agent only after an install, so verify a copy under tmp_path.
    """
    prefix = tmp_path / "prefix"
    stub = prefix / "venv" / "bin" / "edge-agent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "unit" / "edge-agent.service"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text.replace(PREFIX, str(prefix)))
    return out


def verify_problems(path: Path) -> list[str]:
    """Every complaint ``systemd-analyze verify`` has about the unit file.

    verify exits 0 on unknown keys and unparsable values ("ignoring"), so its messages that
    name the file count as failures too.
    """
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.startswith(str(path.parent)) or "edge-agent.service:" in line]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}")
    return problems


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path: Path) -> None:
    path = render(tmp_path, UNIT.read_text())
    assert verify_problems(path) == []


@needs_analyze
def test_drop_ins_written_by_install_sh_verify(tmp_path: Path) -> None:
    """The Jetson and old-systemd drop-ins install.sh may write load without a warning."""
    path = render(tmp_path, UNIT.read_text())
    dropins = path.parent / "edge-agent.service.d"
    dropins.mkdir()
    (dropins / "10-credential.conf").write_text("[Service]\nSetCredential=\n")
    (dropins / "50-jetson.conf").write_text(
        "[Service]\nDeviceAllow=/dev/null rw\nSupplementaryGroups=render\n"
        "Environment=CUDA_CACHE_PATH=%S/edge-agent/cuda-cache\n"
    )
    assert verify_problems(path) == []
    # ... and the check does read drop-ins.
    (dropins / "99-typo.conf").write_text("[Service]\nDeviceAlow=/dev/null rw\n")
    assert verify_problems(path) != []


@needs_analyze
@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("Type=notify", "Tpye=notify"),  # unknown key: systemd ignores it, exit 0
        ("WatchdogSec=30", "WatchdogSec=thirty"),  # bad value: ignored, exit 0
        ("[Service]", "[Servic"),  # broken section: the unit does not load
    ],
)
def test_verify_check_catches_real_mistakes(tmp_path: Path, good: str, bad: str) -> None:
    text = UNIT.read_text()
    assert good in text
    assert verify_problems(render(tmp_path, text.replace(good, bad, 1))) != []


@needs_analyze
def test_security_exposure_is_at_most_2() -> None:
    assert SYSTEMD_ANALYZE is not None
    # --threshold=20: exit status non-zero when the exposure is above 2.0.
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=20", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    output = proc.stdout + proc.stderr
    found = re.search(r"Overall exposure level for edge-agent\.service: (\d+\.\d+)", output)
    assert found, output
    exposure = float(found.group(1))
    assert exposure <= MAX_EXPOSURE, output
    assert proc.returncode == 0, output


def test_startup_is_notify_with_a_config_check(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    agent = f"{PREFIX}/venv/bin/edge-agent"
    config = "${CONFIGURATION_DIRECTORY}/agent.yaml"
    assert one(service, "ExecStartPre") == f"{agent} check-config -c {config}"
    assert one(service, "ExecStart") == f"{agent} run -c {config}"
    assert one(service, "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_watchdog_and_restarts(service: dict[str, list[str]]) -> None:
    assert one(service, "WatchdogSec") == "30"
    assert one(service, "Restart") == "on-failure"
    assert float(one(service, "RestartSec")) > 0
    assert one(service, "TimeoutStopSec") == "10"
    # An invalid config (EX_CONFIG) must not restart in a loop: the agent's own exit 78 stops
    # restarts, and the start limit bounds ExecStartPre= failures (which that does not cover).
    assert "78" in one(service, "RestartPreventExitStatus").split()
    unit = parse_unit(UNIT.read_text())["Unit"]
    assert float(one(unit, "StartLimitIntervalSec")) > 0
    assert 1 < int(one(unit, "StartLimitBurst")) < 100


def test_state_config_and_outbox(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "edge-agent"
    assert one(service, "ConfigurationDirectory") == "edge-agent"
    env = service.get("Environment", [])
    assert "EDGE_AGENT_OUTBOX__PATH=%S/edge-agent/outbox" in env
    assert f"EDGE_AGENT_MODELS__DIR={PREFIX}/models" in env
    assert one(service, "ProtectSystem") == "strict"
    assert one(service, "User") == "edge-agent"


def test_mqtt_password_credential_with_fallback(service: dict[str, list[str]]) -> None:
    assert one(service, "LoadCredential") == "mqtt_password:/etc/edge-agent/mqtt_password"
    # A missing file would fail the start (243/CREDENTIALS) without a SetCredential= of the
    # same name, which systemd uses instead; its value must not be a secret.
    fallback = one(service, "SetCredential")
    assert fallback.split(":", 1)[0] == "mqtt_password"


def test_cameras_and_microphones_are_reachable(service: dict[str, list[str]]) -> None:
    assert set(one(service, "SupplementaryGroups").split()) >= {"video", "audio"}
    assert one(service, "DevicePolicy") in ("closed", "strict")
    allowed = service.get("DeviceAllow", [])
    assert "char-video4linux rw" in allowed
    assert "char-alsa rw" in allowed
    # Settings that would silently cut the agent off its devices or slow it down.
    assert service.get("PrivateDevices", ["no"])[-1] == "no"  # private /dev has no cameras
    assert service.get("PrivateUsers", ["no"])[-1] == "no"  # unmaps the video/audio groups
    assert service.get("ProcSubset", ["all"])[-1] == "all"  # cpuinfo picks the CPU kernels
    assert "AF_INET" in one(service, "RestrictAddressFamilies").split()


_MDWE_PROBE = textwrap.dedent(
    """
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        sys.exit(3)
    try:
        import sounddevice
    except (ImportError, OSError):
        sys.exit(4)
    try:
        sounddevice._ffi.callback("PaStreamCallback", lambda *a: 0)
    except MemoryError:
        sys.exit(0)
    sys.exit(1)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_microphone_callbacks_need_write_execute_memory(service: dict[str, list[str]]) -> None:
    """Why MemoryDenyWriteExecute= stays off: sounddevice's cffi callbacks need W+X memory.

    PR_SET_MDWE (Linux 6.3+) applies the same policy as MemoryDenyWriteExecute=yes. If this
    starts failing because cffi no longer needs W+X memory, turn the setting on in the unit.
    """
    proc = subprocess.run([sys.executable, "-c", _MDWE_PROBE], capture_output=True, timeout=60)
    if proc.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    if proc.returncode == 4:
        pytest.skip("sounddevice/PortAudio is not installed")
    assert proc.returncode == 0, "cffi callbacks now work under W^X: set MemoryDenyWriteExecute=yes"
    assert one(service, "MemoryDenyWriteExecute") == "no"
