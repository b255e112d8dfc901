"""What the agent loads before it knows its sources.

``edge-agent run`` imports the configuration and the daemon whatever the sources are. OpenCV
(~17 MB of RSS), onnxruntime and PortAudio must wait for a camera, a model or a microphone:
an agent with only synthetic sources, or only the outbox and MQTT, stays far below its 80 MB
idle target on a 2 GB board. numpy is still loaded (the configuration classes share modules
with the numpy code of their stages).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

HEAVY = ("cv2", "onnxruntime", "sounddevice", "soxr")


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
