# shellcheck shell=bash
# Shared by scripts/check-systemd.sh and scripts/check-arm64.sh: a cached Debian root file
# system, a container booted from it with systemd-nspawn, commands run inside it, and the
# report (one named line per check, then "N passed, M failed").
#
# Everything the containers do stays inside them: they are booted with --private-network,
# so their only network is their own loopback.

field_passed=0
field_failed=0
field_nspawn_loop=""   # pid of the background loop that (re)starts systemd-nspawn
field_ct_pid=""        # pid (on the host) of the container's PID 1
field_path=/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "==> $*" >&2; }
die() { echo "$(basename "$0"): $*" >&2; exit 2; }

# check NAME OK DETAIL: one line of the report. OK is 0 (passed) or anything else (failed).
check() {
  local name=$1 ok=$2 detail=$3
  if [ "$ok" = 0 ]; then
    field_passed=$((field_passed + 1))
    printf 'PASS  %-28s %s\n' "$name" "$detail"
  else
    field_failed=$((field_failed + 1))
    printf 'FAIL  %-28s %s\n' "$name" "$detail"
  fi
}

# field_args SCRIPT ARGS...: --help prints the script's header comment; no other argument.
field_args() {
  local script=$1
  shift
  case "${1:-}" in
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"
               exit 0 ;;
  esac
  [ $# -eq 0 ] || die "no arguments expected (see --help)"
}

# demo_media REPO LOG: the demo's video and WAV file, written by the checkout's own venv.
demo_media() {
  local repo=$1 log=$2
  [ -x "$repo/.venv/bin/python" ] || die "no .venv: run scripts/setup.sh --dev first"
  "$repo/.venv/bin/python" "$repo/scripts/make_demo_media.py" >>"$log" 2>&1 \
    || die "scripts/make_demo_media.py failed (log: $log)"
}

# copy_checkout REPO ROOT: the checkout as git sees it (tracked and new files, nothing
# ignored) in ROOT/src/edge-agent, where install.sh runs from.
copy_checkout() {
  local repo=$1 root=$2
  mkdir -p "$root/src/edge-agent"
  git -C "$repo" ls-files -z -co --exclude-standard \
    | (cd "$repo" && tar --null -T - -cf -) | tar -C "$root/src/edge-agent" -xf -
}

summary() {
  echo "$field_passed passed, $field_failed failed"
  [ "$field_failed" = 0 ]
}

need_root_and_tools() {
  [ "$(id -u)" = 0 ] || die "must run as root (debootstrap, systemd-nspawn)"
  local missing=() t
  for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    local pkgs=()
    for t in "${missing[@]}"; do
      case "$t" in
        debootstrap) pkgs+=(debootstrap) ;;
        systemd-nspawn) pkgs+=(systemd-container) ;;
        qemu-aarch64-static) pkgs+=(qemu-user-static binfmt-support) ;;
        *) pkgs+=("$t") ;;
      esac
    done
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
}

# build_rootfs ARCH DIR LOG PACKAGES...: a bookworm minbase root in DIR, made once and kept.
# PACKAGES come on top of minbase (debootstrap --include, then apt-get in a chroot for any
# the include list missed). The stamp file records what it was made with; a different list
# makes it again.
build_rootfs() {
  local arch=$1 dir=$2 log=$3
  shift 3
  local extras="$*" stamp="$dir.stamp"
  if [ -d "$dir" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$arch $extras" ]; then
    say "cached root file system: $dir"
    return 0
  fi
  say "building a Debian bookworm $arch root file system in $dir (log: $log; minutes)"
  rm -rf "$dir.tmp" "$dir" "$stamp"
  local base="systemd,systemd-sysv,dbus,python3,python3-venv,mosquitto,ca-certificates"
  if ! debootstrap --arch="$arch" --variant=minbase --include="$base" bookworm "$dir.tmp" \
      http://deb.debian.org/debian >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "debootstrap failed; log: $log"
  fi
  if ! chroot "$dir.tmp" /usr/bin/env -i PATH="$field_path" DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "$@" >>"$log" 2>&1; then
    tail -n 20 "$log" >&2
    die "apt-get install in the new root failed; log: $log"
  fi
  chroot "$dir.tmp" apt-get clean
  # minbase has no /etc/hosts: without one, "localhost" does not resolve for the agent.
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$dir.tmp/etc/hosts"
  mv "$dir.tmp" "$dir"
  echo "$arch $extras" >"$stamp"
}

# fresh_copy SRC DST: DST becomes a copy of the cached root (the checks change it). Refuses
# while anything is mounted under DST (a run killed before it unmounted /proc or /sys):
# rm -rf would walk into them.
fresh_copy() {
  if awk -v d="$2" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
    die "something is still mounted under $2: umount -R it first"
  fi
  rm -rf "$2"
  cp -a --reflink=auto "$1" "$2"
}

# The host pid of the container's PID 1: the systemd child of the current systemd-nspawn.
find_ct_pid() {
  local nspawn pid
  nspawn=$(ps -o pid=,comm= --ppid "$field_nspawn_loop" | awk '$2 == "systemd-nspawn" { print $1; exit }')
  [ -n "$nspawn" ] || return 1
  pid=$(ps -o pid= --ppid "$nspawn" | awk '{ print $1; exit }')
  [ -n "$pid" ] || return 1
  echo "$pid"
}

# boot ROOT MACHINE LOG NSPAWN-ARGS...: boot ROOT in the background. A reboot inside makes
# systemd-nspawn exit with 133; the loop then boots it again, as systemd-nspawn@.service does.
boot() {
  local root=$1 machine=$2 log=$3
  shift 3
  (
    while :; do
      rc=0
      systemd-nspawn -D "$root" -b --register=no --keep-unit --private-network \
        --machine="$machine" --console=read-only "$@" || rc=$?
      echo "[field] systemd-nspawn exited with $rc" >&2
      [ "$rc" = 133 ] || break
    done
  ) >>"$log" 2>&1 &
  field_nspawn_loop=$!
}

# wait_booted TIMEOUT [OLD_PID]: wait for a (new) PID 1 and for its boot to finish.
wait_booted() {
  local timeout=$1 old=${2:-} deadline state
  deadline=$((SECONDS + timeout))
  field_ct_pid=""
  while [ $SECONDS -lt $deadline ]; do
    if ! kill -0 "$field_nspawn_loop" 2>/dev/null; then
      return 1
    fi
    field_ct_pid=$(find_ct_pid || true)
    if [ -n "$field_ct_pid" ] && [ "$field_ct_pid" != "$old" ]; then
      state=$(ct systemctl is-system-running 2>/dev/null || true)
      case "$state" in
        running|degraded) return 0 ;;
      esac
    fi
    sleep 1
  done
  return 1
}

# ct CMD...: run CMD inside the container, in all of its namespaces, with a clean environment.
# Variables for CMD go first as NAME=VALUE words (env(1) syntax).
ct() {
  nsenter -t "$field_ct_pid" -a -- /usr/bin/env -i PATH="$field_path" LANG=C.UTF-8 HOME=/root "$@"
}

# poweroff_container: a clean poweroff, then SIGKILL to what is left of our own processes.
poweroff_container() {
  [ -n "$field_nspawn_loop" ] || return 0
  if [ -n "$field_ct_pid" ] && kill -0 "$field_ct_pid" 2>/dev/null; then
    ct systemctl poweroff >/dev/null 2>&1 || true
  fi
  local deadline=$((SECONDS + 60))
  while [ $SECONDS -lt $deadline ] && kill -0 "$field_nspawn_loop" 2>/dev/null; do
    sleep 1
  done
  if kill -0 "$field_nspawn_loop" 2>/dev/null; then
    local nspawn
    nspawn=$(ps -o pid= --ppid "$field_nspawn_loop" || true)
    # The container's PID 1 first: its death ends everything in its pid namespace.
    # shellcheck disable=SC2086  # $nspawn: zero or more pids
    kill -9 ${field_ct_pid:-} "$field_nspawn_loop" $nspawn 2>/dev/null || true
  fi
  field_nspawn_loop=""
  field_ct_pid=""
}
