#!/usr/bin/env bash
# Shared set-up for scripts/demo.sh and scripts/test.sh: system packages, the .venv, models.
# Usage: scripts/setup.sh [--dev | --demo]   (--dev adds the test tools, --demo what the
# demo's media generator needs)
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
case "${1:-}" in
  --dev) extra="[dev]" ;;
  --demo) extra="[demo]" ;;
  "") ;;
  *) echo "setup.sh: unknown option $1" >&2; exit 2 ;;
esac

# Debian packages the agent and its tests use: a broker, PortAudio, a JACK dummy sound
# card, speech synthesis for audio samples, shellcheck for the install script.
missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto || missing+=(mosquitto)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || missing+=(libportaudio2)
if [ -n "$extra" ]; then
  have espeak-ng || missing+=(espeak-ng)
fi
if [ "$extra" = "[dev]" ]; then
  have jackd || missing+=(jackd2)
  have shellcheck || missing+=(shellcheck)
  # command cameras are tested with real ffmpeg and GStreamer children
  have ffmpeg || missing+=(ffmpeg)
  have gst-launch-1.0 || missing+=(gstreamer1.0-tools gstreamer1.0-plugins-base
                                   gstreamer1.0-plugins-good)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}; as root run: apt-get install -y ${missing[*]}" >&2
  fi
fi

py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$py" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=".venv/.edge-agent-installed${extra}"
sum=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sum" ]; then
  echo "setup: installing edge-agent${extra} into .venv (log: .venv/pip.log)"
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e ".${extra}"; } > .venv/pip.log 2>&1; then
    tail -n 20 .venv/pip.log >&2
    echo "setup: pip install failed; full log in .venv/pip.log" >&2
    exit 1
  fi
  echo "$sum" > "$stamp"
fi
