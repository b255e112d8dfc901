#!/usr/bin/env bash
# The two-command demo, part one: set up, start a local broker, run the agent on
# config/demo.yaml, show what it publishes and save its pictures and clips under
# var/demo/media/. Exits 1 when no event arrived.
#   scripts/demo.sh               run until Ctrl-C (30 s when not on a terminal, e.g. CI)
#   scripts/demo.sh --seconds N   stop after N seconds
# A broker of your own: EDGE_AGENT_MQTT__HOST=... EDGE_AGENT_MQTT__PORT=... scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ -z "$seconds" ] && [ ! -t 0 ]; then seconds=30; fi

scripts/setup.sh --demo
.venv/bin/edge-agent models fetch
if [ -f scripts/make_demo_media.py ]; then .venv/bin/python scripts/make_demo_media.py; fi

workdir=var/demo
mkdir -p "$workdir"
pids=()
cleanup() {
  # Newest first: the agent stops cleanly (publishes "stopped") before its broker goes.
  for ((i=${#pids[@]}-1; i>=0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    wait "${pids[i]}" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

if [ -z "${EDGE_AGENT_MQTT__HOST:-}" ]; then
  mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
  if [ ! -x "$mosq" ]; then
    echo "demo.sh: mosquitto is missing; as root run: apt-get install -y mosquitto" >&2
    exit 1
  fi
  port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$workdir/mosquitto.conf"
  "$mosq" -c "$workdir/mosquitto.conf" > "$workdir/mosquitto.log" 2>&1 &
  pids+=($!)
  export EDGE_AGENT_MQTT__HOST=127.0.0.1 EDGE_AGENT_MQTT__PORT="$port"
  echo "demo.sh: local mosquitto on 127.0.0.1:$port"
fi

.venv/bin/edge-agent check-config -c config/demo.yaml
.venv/bin/edge-agent run -c config/demo.yaml 2> "$workdir/agent.log" &
pids+=($!)
echo "demo.sh: agent running (log: $workdir/agent.log); events follow${seconds:+ for ${seconds} s}"
media="$workdir/media"
rm -rf "$media"
tail_args=(-c config/demo.yaml --save-media "$media")
if [ -n "$seconds" ]; then tail_args+=(--timeout "$seconds"); fi
# tee -i: Ctrl-C stops tail (which then prints its last line), not the copy into tail.log.
.venv/bin/edge-agent tail "${tail_args[@]}" | tee -i "$workdir/tail.log"

count() { grep -c -- "$1" "$workdir/tail.log" || true; }
objects=$(count " object ") sounds=$(count " sound ") synthetic=$(count " synthetic ")
composites=$(count " composite ")
pictures=$(find "$media" -name '*.jpg' 2>/dev/null | wc -l)
clips=$(find "$media" -name '*.wav' 2>/dev/null | wc -l)
echo "demo.sh: seen $objects object, $sounds sound and $synthetic synthetic events," \
     "$composites composite messages"
echo "demo.sh: $pictures pictures and $clips sound clips saved under $media/" \
     "(the *-annotated.jpg files show what the camera detected)"
if [ $((objects + sounds + synthetic)) = 0 ]; then
  echo "demo.sh: no events arrived; see $workdir/agent.log" >&2
  exit 1
fi
