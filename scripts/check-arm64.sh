#!/usr/bin/env bash
# The install on arm64, emulated: a Debian bookworm arm64 root file system (what Raspberry Pi
# OS bookworm is built on: Python 3.11, systemd 252) booted with systemd-nspawn under
# qemu-user, install.sh run inside as on a Pi, then the demo's three sources for 60 s
# against the container's own broker. Run as root:
#
#   sudo scripts/check-arm64.sh      # about 15 minutes; the root file system is built once
#                                    # (about 10 minutes) and kept in var/field
#
# Everything stays on the container's loopback (systemd-nspawn --private-network). pip
# installs arm64 wheels fetched here with this machine's pip configuration
# (var/field/wheels-arm64); `edge-agent models fetch` builds the models inside from the
# package archives in models/cache (run `edge-agent models fetch` here first).
#
# What emulation changes, and how this check deals with it (details in README, "Running as
# a service"):
#   - qemu-user 7.2 (Debian bookworm) gives emulated programs the host's x86 /proc/cpuinfo.
#     onnxruntime 1.30 and later crash at import on it (1.27 only warns); a Pi's
#     /proc/cpuinfo describes its ARM cores. The check mounts a Raspberry Pi 4's
#     /proc/cpuinfo in the container, so it runs the onnxruntime pip picks for a Pi.
#     The service gets it too (BindReadOnlyPaths=, since ProtectProc= gives it its own /proc).
#   - systemd cannot set up service credentials under qemu-user 7.2 (EINVAL), so a drop-in
#     removes LoadCredential=/SetCredential= (the broker here needs no password).
#   - Emulated inference is slow (20-30 s a frame here, under a second on a Pi 4). The
#     unit's watchdog stays on: the agent stretches a source's hang limit to 4 times the
#     slowest model run it has seen, and the check asserts that it was not restarted. The
#     drop-in emulates a Pi 4's Cortex-A72 (QEMU_CPU). The camera takes one frame every 2 s of
#     the demo video, in order (fps: 0.5, realtime: false), so the person walking in from
#     2 s is in the third frame whatever the emulation speed, and an object counts from its
#     first detection (min_hits: 1). Sound and synthetic events must arrive within the 60 s
#     run; object events may take up to 180 s more, and the line says when the
#     first came. Everything else is config/demo.yaml as is.
# The last line is "N passed, M failed"; the exit status is 1 when anything failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/field/lib.sh
. "$repo/scripts/field/lib.sh"

field_args "$0" "$@"

need_root_and_tools debootstrap systemd-nspawn nsenter qemu-aarch64-static
field=$repo/var/field
mkdir -p "$field"
cache=$field/rootfs-arm64
root=$field/arm64-root
log=$field/check-arm64.log
: >"$log"
machine="field-arm64"
unit=edge-agent.service
msgs=/var/lib/field-check/messages.jsonl
run_s=60
object_grace_s=180

# Emulated arm64 programs start through binfmt_misc; "F" (fix binary) makes the interpreter
# usable inside the container.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null
grep -q '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || die "binfmt_misc qemu-aarch64 lacks the F flag: reinstall qemu-user-static"
qemu_version=$(qemu-aarch64-static --version | awk 'NR == 1 { print $3 }')

trap 'poweroff_container' EXIT

# --- what the container needs, made on this machine ---------------------------------------
build_rootfs arm64 "$cache" "$field/rootfs-arm64.log" \
  libportaudio2 libglib2.0-0 alsa-utils v4l-utils mosquitto-clients iproute2 procps

demo_media "$repo" "$log"
ls "$repo"/models/cache/* >/dev/null 2>&1 \
  || die "models/cache is empty: run .venv/bin/edge-agent models fetch first"

# Wheels for Python 3.11 on aarch64, as pip on a Pi would pick them (the newest that fit),
# rebuilt when pyproject.toml changes.
wheels=$field/wheels-arm64
sum=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$wheels/.pyproject.sha256" 2>/dev/null || true)" != "$sum" ]; then
  say "arm64 wheels in $wheels"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  mapfile -t reqs < <("$repo/.venv/bin/python" -c '
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["models"]))
' "$repo/pyproject.toml")
  if ! "$repo/.venv/bin/python" -m pip download -q -d "$wheels" --only-binary=:all: \
      --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
      --platform manylinux2014_aarch64 --platform linux_aarch64 \
      --python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none \
      "${reqs[@]}" 'setuptools>=68' wheel >>"$log" 2>&1; then
    die "pip could not download the arm64 wheels (log: $log)"
  fi
  echo "$sum" >"$wheels/.pyproject.sha256"
fi
ort_wheel=$(basename "$(ls "$wheels"/onnxruntime-*.whl)")

say "fresh container root in $root"
fresh_copy "$cache" "$root"
copy_checkout "$repo" "$root"
mkdir -p "$root/srv/field-check/media" "$root/srv/field-check/models-cache" "$root/var/lib/field-check"
cp "$repo/demo/street.avi" "$repo/demo/sounds.wav" "$root/srv/field-check/media/"
cp -a "$repo"/models/cache/. "$root/srv/field-check/models-cache/"
chmod -R a+rX "$root/srv/field-check"
# A Raspberry Pi 4's /proc/cpuinfo (4 x Cortex-A72, shortened to 2 cores like this host).
mkdir -p "$root/etc/field-check"
for n in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$n"
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done >"$root/etc/field-check/cpuinfo-pi4"
printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n' >>"$root/etc/field-check/cpuinfo-pi4"
# Emulation only (see the top of this file).
mkdir -p "$root/etc/systemd/system/edge-agent.service.d"
printf '%s\n' "# scripts/check-arm64.sh: what qemu-user emulation needs; see that script." \
  "[Service]" "LoadCredential=" "SetCredential=" \
  "BindReadOnlyPaths=/etc/field-check/cpuinfo-pi4:/proc/cpuinfo" \
  "Environment=QEMU_CPU=cortex-a72" "TimeoutStartSec=600" \
  >"$root/etc/systemd/system/edge-agent.service.d/90-qemu.conf"
cat >"$root/etc/systemd/system/field-collector.service" <<EOF
[Unit]
Description=Field check: record everything under edge-agent/ (scripts/check-arm64.sh)
After=mosquitto.service
[Service]
ExecStart=/usr/bin/mosquitto_sub -h localhost -c -i field-check -q 1 -t 'edge-agent/#' -F %%j
StandardOutput=append:$msgs
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/field-collector.service \
  "$root/etc/systemd/system/multi-user.target.wants/field-collector.service"

show() { ct systemctl show -P "$1" "$unit"; }
msize() { ct stat -c %s "$msgs" 2>/dev/null || echo 0; }
ask() { ct python3 /src/edge-agent/scripts/field/messages.py "$msgs" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", b - a }'; }
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  while [ $SECONDS -lt "$deadline" ]; do
    if "$@"; then return 0; fi
    sleep 2
  done
  return 1
}
is_active() { [ "$(show ActiveState)" = active ] && [ "$(show SubState)" = running ]; }
status_seen() { [[ " $(ask statuses --since "$1") " == *" $2 "* ]]; }
kind_count() {  # kind_count OFFSET KIND
  ask kinds --since "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | grep . || echo 0
}

# --- boot ----------------------------------------------------------------------------------
say "booting the arm64 container under qemu-user $qemu_version (log: $log)"
t0=$(now)
boot "$root" "$machine" "$log" --bind-ro="$wheels:/srv/field-check/wheels"
booted=1
wait_booted 600 && booted=0
[ "$booted" = 0 ] || { check boot 1 "the container did not boot within 600 s (log: $log)"; summary; exit 1; }
set +e
ct mount --bind /etc/field-check/cpuinfo-pi4 /proc/cpuinfo
check boot 0 "$(ct uname -m) container, systemd $(ct systemctl --version | awk 'NR == 1 { print $2 }') as PID 1 under qemu-user $qemu_version, $(elapsed "$t0" "$(now)") s"

# --- install as on a Pi --------------------------------------------------------------------
say "install.sh inside (emulated pip and models fetch: several minutes)"
ct install -d -m 0755 /opt/edge-agent/models
ct cp -a /srv/field-check/models-cache /opt/edge-agent/models/cache
t0=$(now)
ct PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/field-check/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
  bash /src/edge-agent/scripts/install.sh >>"$log" 2>&1
rc=$?
t1=$(now)
ort=$(ct /opt/edge-agent/venv/bin/python -c 'import onnxruntime as o; print(o.__version__, *o.get_available_providers())' 2>&1 | tail -n 1)
models=$(ct sh -c 'cd /opt/edge-agent/models && ls yolov3-tiny-coco.onnx yamnet/model.onnx 2>/dev/null' | tr '\n' ' ')
ok=1
[ "$rc" = 0 ] && [ -n "$models" ] && [[ "$ort" == [0-9]* ]] && ok=0
check install "$ok" "install.sh exit $rc in $(elapsed "$t0" "$t1") s; onnxruntime $ort (wheel $ort_wheel); models built by 'models fetch': ${models:-none}"

off=0
wait_for 120 status_seen "$off" online
ok=1
is_active && status_seen "$off" online && ok=0
check first-start "$ok" "the starter config: $(show ActiveState) ($(show SubState)), status $(ask statuses | awk '{ print $NF }')"

# --- the demo's three sources --------------------------------------------------------------
ct /opt/edge-agent/venv/bin/python - /src/edge-agent/config/demo.yaml /etc/edge-agent/agent.yaml <<'EOF'
import sys
import yaml

config = yaml.safe_load(open(sys.argv[1]))
camera = config["cameras"][0]
camera["url"] = "/srv/field-check/media/street.avi"
# Emulation is slow: a frame every 2 s of video, in order; an object from its first detection.
camera["realtime"] = False
camera["fps"] = 0.5
camera.setdefault("tracking", {})["min_hits"] = 1
config["microphones"][0]["file"] = "/srv/field-check/media/sounds.wav"
for key in ("models", "outbox"):  # the unit's environment sets both
    config.pop(key, None)
config["mqtt"] = {"host": "localhost"}
with open(sys.argv[2], "w") as f:
    f.write("# Written by scripts/check-arm64.sh from config/demo.yaml.\n")
    yaml.safe_dump(config, f, sort_keys=False)
EOF
off=$(msize)
t0=$(now)
ct systemctl restart "$unit"
wait_for 600 is_active
t1=$(now)
say "the demo config runs for $run_s s"
sleep "$run_s"
kinds=$(ask kinds --since "$off")
stats_ms=$(ct sh -c "grep -h '/stats\"' $msgs | tail -n 1" | python3 -c '
import json, sys
try:
    stats = json.loads(json.loads(sys.stdin.read())["payload"])
except Exception:
    sys.exit(0)
for sid, s in stats.get("sources", {}).items():
    p50 = (s.get("inference_ms") or {}).get("p50")
    if p50 is not None:
        print(f"{sid}: inference p50 {p50 / 1000:.1f} s")
' 2>/dev/null | tr '\n' ' ')
check start "$( is_active && echo 0 || echo 1)" "restart with the demo config: active after $(elapsed "$t0" "$t1") s; ${stats_ms:-no inference figures yet}"
for kind in synthetic sound; do
  n=$(kind_count "$off" "$kind")
  ok=1
  [ "$n" -ge 1 ] && ok=0
  check "events-$kind" "$ok" "$n $kind events in the first $run_s s after the start (all kinds: ${kinds:-none})"
done
has_object() { [ "$(kind_count "$off" object)" -ge 1 ]; }
wait_for "$object_grace_s" has_object
t2=$(now)
n=$(kind_count "$off" object)
ok=1
[ "$n" -ge 1 ] && ok=0
labels=$(ask labels object --since "$off")
check events-object "$ok" "$n object events, the first within $(elapsed "$t1" "$t2") s of the start (labels: ${labels:-none})"
ok=1
ask gaps >/dev/null && ok=0
check no-loss "$ok" "$(ask gaps | head -n 1)"
# Slow is not hung: the watchdog stayed on and never fired.
restarts=$(show NRestarts)
slow=$(ct journalctl -u "$unit" -o cat --no-pager | grep -m 1 "inference takes up to" || true)
hung=$(ct journalctl -u "$unit" -o cat --no-pager | grep -c "no progress for" || true)
ok=1
[ "$restarts" = 0 ] && [ "$hung" = 0 ] && [ -n "$slow" ] && ok=0
check watchdog "$ok" "WatchdogSec=$(show WatchdogUSec), restarts $restarts, hang reports $hung; ${slow:-no slow-inference line}"

poweroff_container
summary
