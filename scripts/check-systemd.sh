#!/usr/bin/env bash
# The agent as systemd runs it: install.sh in a Debian bookworm container booted with a real
# systemd (PID 1), then the unit's promises, one named line each. Run as root:
#
#   sudo scripts/check-systemd.sh            # about 10 minutes; the root file system is
#                                            # built once (a few minutes) and kept in var/field
#
# The container is booted with systemd-nspawn --private-network: every connection stays on
# its own loopback. The broker is the container's Mosquitto; the sources are a video file
# camera and a WAV microphone (scripts/make_demo_media.py) and a synthetic source. pip
# installs from a wheel folder made here (var/field/wheels-amd64) with this machine's pip
# configuration; the models are copied from models/ (run `edge-agent models fetch` first).
# What it checks:
#   first-start      a fresh install.sh: the starter agent.yaml, online, only localhost, no device
#   start            active (running) through READY=1, STATUS=, the running line, no traceback
#   exposure         systemd-analyze security on the installed unit
#   credential       the MQTT password arrives through LoadCredential= and is in no log
#   reload           systemctl reload applies a changed config, same main PID
#   kill-9           systemd restarts it; offline then online; nothing lost (per-source seq)
#   watchdog-sigstop a frozen process is killed and restarted by the watchdog; nothing lost
#   watchdog-stuck   one stuck worker thread (test-only fault hook) does the same
#   stop             stopped (retained), gone well within TimeoutStopSec, exit status 0
#   reboot           the agent comes back by itself; the backlog from a broker outage arrives
#   uninstall        --uninstall keeps /etc/edge-agent and /var/lib/edge-agent, nothing else
#   purge            --uninstall --purge leaves the system as it was before install.sh
# The last line is "N passed, M failed"; the exit status is 1 when anything failed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/field/lib.sh
. "$repo/scripts/field/lib.sh"

field_args "$0" "$@"

need_root_and_tools debootstrap systemd-nspawn nsenter
field=$repo/var/field
mkdir -p "$field"
cache=$field/rootfs-amd64
root=$field/systemd-root
log=$field/check-systemd.log
: >"$log"
machine="field-systemd"
unit=edge-agent.service
device="field-01"
topic=edge-agent/$device
msgs=/var/lib/field-check/messages.jsonl
# The unit's timings (systemd/edge-agent.service).
watchdog_s=30 restart_s=5 stop_timeout_s=10

trap 'poweroff_container' EXIT

# --- what the container needs, made on this machine ---------------------------------------
# What install.sh would install (so that it needs no network here), the broker's clients for
# the check, ss (iproute2) and pgrep (procps).
build_rootfs amd64 "$cache" "$field/rootfs-amd64.log" \
  libportaudio2 libglib2.0-0 alsa-utils v4l-utils mosquitto-clients iproute2 procps

demo_media "$repo" "$log"
for f in yolov3-tiny-coco.onnx yamnet/model.onnx; do
  [ -f "$repo/models/$f" ] || die "models/$f is missing: run .venv/bin/edge-agent models fetch"
done

# The container has no network: pip installs from a folder of wheels, made here with this
# machine's pip configuration (index, certificates) and rebuilt when pyproject.toml changes.
wheels=$field/wheels-amd64
sum=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$wheels/.pyproject.sha256" 2>/dev/null || true)" != "$sum" ]; then
  say "wheels for the container in $wheels"
  rm -rf "$wheels"
  mkdir -p "$wheels"
  stage=$(mktemp -d)
  tar -C "$repo" -cf - pyproject.toml README.md agent | tar -C "$stage" -xf -
  if ! { "$repo/.venv/bin/python" -m pip wheel -q -w "$wheels" "${stage}[models]" &&
         "$repo/.venv/bin/python" -m pip download -q -d "$wheels" 'setuptools>=68' wheel; } >>"$log" 2>&1; then
    die "pip could not gather the wheels (log: $log)"
  fi
  rm -rf "$stage" "$wheels"/edge_agent-*.whl  # install.sh builds the agent from the checkout
  echo "$sum" >"$wheels/.pyproject.sha256"
fi

say "fresh container root in $root"
fresh_copy "$cache" "$root"
copy_checkout "$repo" "$root"
mkdir -p "$root/srv/field-check/media" "$root/srv/field-check/models" "$root/var/lib/field-check"
cp "$repo/demo/street.avi" "$repo/demo/sounds.wav" "$root/srv/field-check/media/"
(cd "$repo/models" && tar --exclude=cache -cf - .) | tar -C "$root/srv/field-check/models" -xf -
chmod -R a+rX "$root/srv/field-check"
# The subscriber that records what the broker delivers: a persistent session (-c), so
# messages sent while it is down (broker restart, reboot) are kept for it by Mosquitto.
cat >"$root/etc/systemd/system/field-collector.service" <<EOF
[Unit]
Description=Field check: record everything under edge-agent/ (scripts/check-systemd.sh)
After=mosquitto.service
[Service]
ExecStart=/usr/bin/mosquitto_sub -h localhost -u checker -P checker-pw -c -i field-check -q 1 -t 'edge-agent/#' -F %%j
StandardOutput=append:$msgs
Restart=always
RestartSec=1
[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/field-collector.service \
  "$root/etc/systemd/system/multi-user.target.wants/field-collector.service"

# --- helpers that need the container -----------------------------------------------------
show() { ct systemctl show -P "$1" "$unit"; }
main_pid() { show MainPID; }
msize() { ct stat -c %s "$msgs" 2>/dev/null || echo 0; }
ask() { ct python3 /src/edge-agent/scripts/field/messages.py "$msgs" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
journal() { ct journalctl --no-pager -o cat "$@"; }
# wait_for SECONDS CMD...: poll CMD (a shell function or command) once a second.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  while [ $SECONDS -lt "$deadline" ]; do
    if "$@"; then return 0; fi
    sleep 1
  done
  return 1
}
is_active() { [ "$(show ActiveState)" = active ] && [ "$(show SubState)" = running ]; }
new_main_pid() { local p; p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$1" ] && is_active; }
statuses_since() { ask statuses --since "$1"; }
status_seen() { [[ " $(statuses_since "$1") " == *" $2 "* ]]; }
events_since() { ask count "$2" --since "$1"; }
has_events() { [ "$(events_since "$1" "$2")" -ge "${3:-1}" ]; }
no_gaps() { ask gaps >/dev/null; }
# The files of the system, one "PATH WHAT" line each (type, owner, mode; the content of files
# in /etc), without what changes by itself or belongs to this check: logs and journal,
# systemd's and the broker's state, the collector's record, the check's broker settings
# (/etc/mosquitto), the checkout and media (/src, /srv), and the backups of /etc/passwd and
# friends that useradd and userdel leave (/etc/*-).
snapshot() {
  # shellcheck disable=SC2016  # expanded by the container's shell
  ct sh -c 'find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
      -o -path /var/tmp -o -path /var/log -o -path /var/lib/systemd -o -path /var/lib/mosquitto \
      -o -path /var/lib/field-check -o -path /var/cache -o -path /src -o -path /srv \
      -o -path /etc/mosquitto \) -prune -o ! -path "/etc/*-" -printf "%p %y:%u:%g:%m\n"
    find /etc -xdev -path /etc/mosquitto -prune -o -type f ! -name "*-" -exec sha256sum {} + \
      | awk "{ print \$2, \"sha256:\" \$1 }"' | sort
}

# --- boot --------------------------------------------------------------------------------
say "booting the container (log: $log)"
boot "$root" "$machine" "$log" --bind-ro="$wheels:/srv/field-check/wheels"
wait_booted 180 || die "the container did not boot within 180 s (log: $log)"
say "booted: systemd $(ct systemctl --version | awk 'NR == 1 { print $2 }'), PID 1 is host pid $field_ct_pid"
wait_for 30 ct test -s "$msgs" || true
before_install=$(snapshot)
# From here on a failed command is a failed check, reported, not the end of the run.
set +e

# --- first start: install.sh with its starter config -------------------------------------
say "install.sh inside the container (pip from the wheel folder; models copied first)"
ct install -d -m 0755 /opt/edge-agent
ct cp -a /srv/field-check/models /opt/edge-agent/models
off=$(msize)
t0=$(now)
if ct PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/field-check/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
    bash /src/edge-agent/scripts/install.sh >>"$log" 2>&1; then
  install_ok=0
else
  install_ok=1
fi
t1=$(now)
pid=$(main_pid)
wait_for 30 status_seen "$off" online || true
conns=$(ct ss -Htnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) { print $5 }' | sort -u | tr '\n' ' ')
foreign=$(tr ' ' '\n' <<<"$conns" | grep -v '^$' \
  | grep -Ev '^(127\.[0-9.]+|\[::1\]|\[::ffff:127\.[0-9.]+\]):[0-9]+$' || true)
devices=$(ct sh -c "ls -l /proc/$pid/fd 2>/dev/null | grep -E '/dev/(video|snd|media)' || true")
running_line=$(journal -u "$unit" -b | grep -E 'running: device .*, 0 sources' | tail -n 1 || true)
ok=1
if [ "$install_ok" = 0 ] && is_active && status_seen "$off" online && [ -n "$conns" ] \
    && [ -z "$foreign" ] && [ -z "$devices" ] && [ -n "$running_line" ] \
    && ct grep -q 'no camera or' /etc/edge-agent/agent.yaml; then
  ok=0
fi
check first-start "$ok" "install.sh $(elapsed "$t0" "$t1") s (exit $install_ok); starter agent.yaml; online; connections: ${conns:-none}; devices open: ${devices:-none}"

# --- the check's own configuration: password auth on, three sources ----------------------
say "password auth on the broker; the check's agent.yaml with a camera, a microphone, a synthetic source"
password="field-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
ct sh -c "umask 077; : > /etc/mosquitto/field.passwd
  mosquitto_passwd -b /etc/mosquitto/field.passwd edge-01 '$password'
  mosquitto_passwd -b /etc/mosquitto/field.passwd checker checker-pw
  chown mosquitto:mosquitto /etc/mosquitto/field.passwd
  printf 'listener 1883 localhost\nallow_anonymous false\npassword_file /etc/mosquitto/field.passwd\n' \
    > /etc/mosquitto/conf.d/field-check.conf"
ct systemctl restart mosquitto
write_config() {  # write_config EXTRA_SYNTHETIC_ID (or nothing)
  local extra=""
  [ -z "${1:-}" ] || extra="  - {id: $1, rate: 1}"
  ct sh -c "cat > /etc/edge-agent/agent.yaml" <<EOF
# Written by scripts/check-systemd.sh.
device: {id: $device, site: field-check}
cameras:
  - id: street
    url: /srv/field-check/media/street.avi
    loop: true
    fps: 2
    objects:
      track: [person, motorbike, cup]
      filters: {cup: {threshold: 0.6}}
    snapshots: {max_width: 320, quality: 60}
microphones:
  - id: lobby-mic
    file: /srv/field-check/media/sounds.wav
    loop: true
    listen: [speech, siren]
synthetic:
  - {id: heartbeat, rate: 1}
$extra
mqtt:
  host: localhost
  username: edge-01
stats: {interval: 10}
EOF
}
write_config
ct sh -c "umask 077; printf '%s\n' '$password' > /etc/edge-agent/mqtt_password"
anon=$(ct mosquitto_pub -h localhost -t "$topic/probe" -m x 2>&1 || true)

# --- start ---------------------------------------------------------------------------------
off=$(msize)
since=$(date '+%Y-%m-%d %H:%M:%S')
ct systemctl restart "$unit" || true
pid=$(main_pid)
status_text=$(show StatusText)
wait_for 60 status_seen "$off" online || true
running_line=$(journal -u "$unit" --since "$since" | grep -E 'running: device '"$device"', 3 sources' | tail -n 1 || true)
traces=$(journal -u "$unit" -b | grep -c Traceback || true)
ok=1
if is_active && [ "$(show Type)" = notify ] && [ -n "$status_text" ] && [ -n "$running_line" ] \
    && [ "$traces" = 0 ]; then ok=0; fi
check start "$ok" "$(show ActiveState) ($(show SubState)), Type=$(show Type), STATUS=\"$status_text\"; \"${running_line}\"; tracebacks: $traces"

exposure=$(ct systemd-analyze security "$unit" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
ok=1
if [ -n "$exposure" ] && awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }'; then ok=0; fi
check exposure "$ok" "systemd-analyze security $unit: ${exposure:-?} (at most 2.0)"

# --- credential ----------------------------------------------------------------------------
wait_for 60 has_events "$off" heartbeat 3 || true
leaks=$( { journal -b; ct systemctl show "$unit"; ct cat "/proc/$pid/environ" | tr '\0' '\n';
           ct cat "$msgs"; ct cat /etc/edge-agent/agent.yaml; } 2>/dev/null | grep -cF "$password" || true)
# The agent sees the password only as its credential: $CREDENTIALS_DIRECTORY/mqtt_password
# holds it, and the agent's user cannot read /etc/edge-agent/mqtt_password itself.
creds=$(ct cat "/proc/$pid/environ" | tr '\0' '\n' | sed -n 's/^CREDENTIALS_DIRECTORY=//p')
cred_ok=1
[ -n "$creds" ] && [ "$(ct cat "$creds/mqtt_password")" = "$password" ] && cred_ok=0
unreadable=1
ct setpriv --reuid=edge-agent --regid=edge-agent --clear-groups cat /etc/edge-agent/mqtt_password \
  >/dev/null 2>&1 || unreadable=0
ok=1
if status_seen "$off" online && has_events "$off" heartbeat && [ -n "$anon" ] && [ "$leaks" = 0 ] \
    && [ "$cred_ok" = 0 ] && [ "$unreadable" = 0 ]; then ok=0; fi
check credential "$ok" "broker refuses anonymous (\"${anon%%$'\n'*}\"); online with the password in ${creds:-?}/mqtt_password (LoadCredential=); /etc/edge-agent/mqtt_password unreadable to the agent's user: $([ "$unreadable" = 0 ] && echo yes || echo no); password found $leaks times in journal, unit, environment, messages, agent.yaml"

# --- reload --------------------------------------------------------------------------------
off=$(msize)
pid=$(main_pid)
write_config heartbeat-2
ct systemctl reload "$unit" || true
wait_for 30 has_events "$off" heartbeat-2 2 || true
applied=$(journal -u "$unit" -b | grep -c 'reload: applied' || true)
ok=1
if [ "$(main_pid)" = "$pid" ] && has_events "$off" heartbeat-2 2 && [ "$applied" -ge 1 ] && is_active; then ok=0; fi
check reload "$ok" "main PID $pid -> $(main_pid); new source heartbeat-2: $(events_since "$off" heartbeat-2) events; 'reload: applied' in the journal"

# --- kill -9 -------------------------------------------------------------------------------
restarts=$(show NRestarts)
pid=$(main_pid)
off=$(msize)
t0=$(now)
ct kill -9 "$pid"
wait_for 90 new_main_pid "$pid" || true
t1=$(now)
wait_for 30 status_seen "$off" online || true
wait_for 30 has_events "$off" heartbeat 5 || true
sleep 3
seen=$(statuses_since "$off")
gaps=$(ask gaps | head -n 3 | tr '\n' ' ' || true)
ok=1
if [ "$(show NRestarts)" -gt "$restarts" ] && [[ "$seen" =~ offline.*online ]] && no_gaps; then ok=0; fi
check kill-9 "$ok" "restarted by systemd in $(elapsed "$t0" "$t1") s (RestartSec=$restart_s); status: $seen; $gaps"

# --- watchdog: the whole process frozen ----------------------------------------------------
watchdog_case() {  # watchdog_case NAME HOW BOUND_S: HOW freezes the pipeline
  local name=$1 how=$2 bound=$3 restarts pid off t0 t1 wd fired detail ok=1
  restarts=$(show NRestarts)
  pid=$(main_pid)
  off=$(msize)
  t0=$(now)
  "$how" "$pid"
  wait_for $((bound + 60)) new_main_pid "$pid" || true
  t1=$(now)
  fired=$(ct journalctl -u "$unit" -b -o short-unix --no-pager --since "@${t0%.*}" \
    | awk '/Watchdog timeout/ { print $1; exit }')
  wait_for 60 has_events "$off" heartbeat 3 || true
  sleep 3
  wd=$( [ -n "$fired" ] && elapsed "$t0" "$fired" || echo "?")
  detail="watchdog fired $wd s after the freeze, new process $(elapsed "$t0" "$t1") s after it (bound $bound s); $(ask gaps | head -n 1)"
  if [ -n "$fired" ] && [ "$(show NRestarts)" -gt "$restarts" ] \
      && awk -v a="$(elapsed "$t0" "$t1")" -v b="$bound" 'BEGIN { exit !(a <= b) }' && no_gaps; then
    ok=0
  fi
  check "$name" "$ok" "$detail"
}
freeze_process() { ct kill -STOP "$1"; }
# Frozen right after a keep-alive, at worst: WatchdogSec to notice, RestartSec to restart,
# plus the start itself (ExecStartPre check-config, imports) on this shared machine.
watchdog_case watchdog-sigstop freeze_process $((watchdog_s + restart_s + 20))

# --- watchdog: one worker thread stuck (the test-only fault hook) --------------------------
ct install -d -m 0755 /etc/systemd/system/edge-agent.service.d /run/field-check
ct sh -c 'printf "[Service]\nEnvironment=EDGE_AGENT_TEST_STALL_FILE=/run/field-check/stall\n" \
  > /etc/systemd/system/edge-agent.service.d/90-field-check.conf'
ct systemctl daemon-reload
ct systemctl restart "$unit" || true
wait_for 60 is_active || true
sleep 3
stick_worker() { ct sh -c 'echo heartbeat > /run/field-check/stall'; }
# The agent calls a thread hung after half of WatchdogSec (15 s) and stops the keep-alives;
# systemd notices within WatchdogSec, restarts after RestartSec.
watchdog_case watchdog-stuck stick_worker $((watchdog_s / 2 + watchdog_s + restart_s + 20))
hung_line=$(journal -u "$unit" -b | grep -E 'heartbeat: no progress for' | tail -n 1 || true)
[ -n "$hung_line" ] || check watchdog-stuck-log 1 "the agent did not log the stuck thread"
ct rm -f /run/field-check/stall /etc/systemd/system/edge-agent.service.d/90-field-check.conf
ct rmdir --ignore-fail-on-non-empty /etc/systemd/system/edge-agent.service.d
ct systemctl daemon-reload

# --- stop ----------------------------------------------------------------------------------
pid=$(main_pid)
off=$(msize)
t0=$(now)
ct systemctl stop "$unit" || true
t1=$(now)
took=$(elapsed "$t0" "$t1")
retained=$(ct mosquitto_sub -h localhost -u checker -P checker-pw -t "$topic/status" -C 1 -W 5 2>/dev/null || true)
gone=0
ct kill -0 "$pid" 2>/dev/null && gone=1
ok=1
if [ "$retained" = stopped ] && [ "$gone" = 0 ] && [ "$(show ExecMainStatus)" = 0 ] \
    && [ "$(show Result)" = success ] \
    && awk -v a="$took" -v b="$stop_timeout_s" 'BEGIN { exit !(a < b / 2) }'; then ok=0; fi
check stop "$ok" "stopped in $took s (TimeoutStopSec=$stop_timeout_s); retained status '$retained'; exit status $(show ExecMainStatus), result $(show Result)"

# --- reboot with a backlog -----------------------------------------------------------------
ct systemctl start "$unit" || true
wait_for 60 is_active || true
wait_for 30 has_events "$(msize)" heartbeat 2
old_run=$(ask runs | awk '{ print $NF }')
ct systemctl stop mosquitto
sleep 15  # events pile up in the outbox: the broker is down
off=$(msize)
t0=$(now)
old_pid1=$field_ct_pid
ct systemctl reboot || true
booted=1
wait_booted 240 "$old_pid1" && booted=0
wait_for 90 is_active || true
t1=$(now)
backlog() { ask count heartbeat --run "$old_run" --since "$off"; }
arrived() { [ "$(backlog)" -ge 10 ] && no_gaps; }
wait_for 90 arrived
ok=1
if [ "$booted" = 0 ] && is_active && [ "$(show NRestarts)" = 0 ] && [ "$(backlog)" -ge 10 ] && no_gaps; then ok=0; fi
check reboot "$ok" "back by itself $(elapsed "$t0" "$t1") s after 'systemctl reboot'; $(backlog) heartbeat events of the run before the reboot (run $old_run) arrived after it; $(ask gaps | head -n 1)"

# --- uninstall, then purge -----------------------------------------------------------------
compare() {  # the paths that differ from before install.sh (new, gone or changed)
  diff <(echo "$before_install") <(snapshot) | awk '/^[<>]/ { print $2 }' | sort -u
}
ct bash /src/edge-agent/scripts/install.sh --uninstall >>"$log" 2>&1 && un=0 || un=$?
left=$(compare | grep -Ev '^/(etc|var/lib)/edge-agent(/|$)' | tr '\n' ' ' || true)
kept=$(ct sh -c 'test -f /etc/edge-agent/agent.yaml && test -f /etc/edge-agent/mqtt_password && test -d /var/lib/edge-agent/outbox' && echo yes || echo no)
running=$(ct pgrep -f '/opt/edge-agent/venv/bin/edge-agent' | tr '\n' ' ')
ok=1
if [ "$un" = 0 ] && [ "$kept" = yes ] && [ -z "$left" ] && [ -z "$running" ] \
    && ! ct getent passwd edge-agent >/dev/null; then ok=0; fi
check uninstall "$ok" "exit $un; /etc/edge-agent and /var/lib/edge-agent kept: $kept; other changes: ${left:-none}; agent processes: ${running:-none}"

ct bash /src/edge-agent/scripts/install.sh --uninstall --purge >>"$log" 2>&1 && un=0 || un=$?
left=$(compare | tr '\n' ' ')
ok=1
if [ "$un" = 0 ] && [ -z "$left" ]; then ok=0; fi
check purge "$ok" "exit $un; differences from before install.sh: ${left:-none}"

poweroff_container
summary
