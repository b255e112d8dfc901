"""What the agent loads before it knows its sources.

``edge-agent run`` imports the configuration and the daemon whatever the sources are. OpenCV
(~17 MB of RSS), onnxruntime and PortAudio must wait for a camera, a model or a microphone:
an agent with only synthetic sources, or only the outbox and MQTT, stays far below its 80 MB
idle target on a 2 GB board. The configuration alone (``agent.config``, which is what
``check-config`` reads) loads not even numpy: each stage's configuration is pydantic only
(``agent.<stage>.config``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("cv2", "onnxruntime", "sounddevice", "soxr")
STAGE_LIBRARIES = ("numpy", *HEAVY)


def _loaded(code: str, *args: str) -> list[str]:
    """Which of ``STAGE_LIBRARIES`` a fresh interpreter has loaded after ``code``."""
    code += ("\nimport json, sys\n"
             f"print(json.dumps([m for m in {STAGE_LIBRARIES!r} if m in sys.modules]))\n")
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_daemon_loads_no_capture_or_inference_library() -> None:
    # A fresh interpreter: in this one, other tests have long imported cv2.
    code = (
        "import json, sys\n"
        "import agent.cli, agent.config, agent.daemon\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True)
    assert json.loads(done.stdout) == []


def test_loading_the_configuration_loads_no_stage_library() -> None:
    assert _loaded("import agent.config") == []


def test_check_config_loads_no_stage_library(tmp_path: Path) -> None:
    # A configuration with every kind of source, a rule and a model per source: checking it
    # reads the label catalogue and validates everything, and still runs nothing of a stage.
    config = tmp_path / "agent.yaml"
    config.write_text(f"""
cameras:
  - id: door
    url: {tmp_path / "door.mp4"}
    zones:
      porch: {{coordinates: [[0, 0], [1, 0], [1, 1]]}}
    classify: {{run: request}}
  - id: pi
    command: {{preset: rpicam, width: 640, height: 480}}
microphones:
  - id: hall
    file: {tmp_path / "hall.wav"}
synthetic:
  - id: tick
rules:
  - id: glass-burst
    window_seconds: 30
    min_events: 3
    include_label_ids: [glass, shatter]
    include_mic_ids: [hall]
outbox:
  path: {tmp_path / "outbox"}
""", encoding="utf-8")
    code = ("import sys\nfrom agent.cli import main\n"
            "rc = main(['check-config', '-c', sys.argv[1]])\nassert rc == 0, rc")
    assert _loaded(code, str(config)) == []
