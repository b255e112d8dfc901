#!/usr/bin/env bash
# Install edge-agent as a systemd service from this checkout.
#
# Targets: Raspberry Pi OS bookworm (arm64, Pi 4/5) and NVIDIA Jetson JetPack 6 (Ubuntu 22.04).
# Other Debian/Ubuntu systems work too; the script says when it does not recognise the board.
# Re-running it is safe: it changes only what differs, never overwrites
# /etc/edge-agent/agent.yaml and restarts the service so new code is picked up.
#
# Test hook: with --dry-run, EDGE_AGENT_INSTALL_ROOT=DIR makes the script look for /etc and
# /var/lib files under DIR instead of / (the tests use it; nothing is written either way).
set -euo pipefail

prog=$(basename "$0")
repo=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat <<EOF
usage: $prog [--dry-run] [--prefix DIR] [--no-start] [--no-models] [--ort-wheel PATH]
       $prog [--dry-run] --uninstall [--purge] [--prefix DIR]

Install edge-agent from this checkout as the systemd service edge-agent.service.

  --prefix DIR       where the venv and models go (default /opt/edge-agent)
  --no-start         install and enable the service, but do not (re)start it
  --no-models        do not run 'edge-agent models fetch' (offline installs; copy the
                     model files into PREFIX/models yourself)
  --ort-wheel PATH   Jetson: install this onnxruntime-gpu wheel (CUDA/TensorRT) instead of
                     the CPU-only onnxruntime from PyPI; kept in PREFIX/wheels for re-runs
  --dry-run          print every command and file it would write; change nothing
  --uninstall        stop and remove the service, venv, models and the edge-agent user;
                     keep /etc/edge-agent (configuration) and /var/lib/edge-agent (outbox)
  --purge            with --uninstall, delete /etc/edge-agent and /var/lib/edge-agent too
  -h, --help         show this help

Runs as root, except with --dry-run.
EOF
}

die() { echo "$prog: $*" >&2; exit 1; }
usage_error() { usage >&2; echo "$prog: $*" >&2; exit 2; }
say() { echo "==> $*"; }
note() { echo "    $*"; }
warn() { echo "$prog: warning: $*" >&2; }

# --- options ------------------------------------------------------------------------------
prefix=/opt/edge-agent
dry_run=0 uninstall=0 purge=0 start=1 fetch_models=1 ort_wheel=""
original_args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || usage_error "--prefix needs a directory"
              prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#--prefix=}; shift ;;
    --ort-wheel) [ $# -ge 2 ] || usage_error "--ort-wheel needs a path"
                 ort_wheel=$2; shift 2 ;;
    --ort-wheel=*) ort_wheel=${1#--ort-wheel=}; shift ;;
    --no-start) start=0; shift ;;
    --no-models) fetch_models=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option: $1" ;;
  esac
done
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || usage_error "--purge goes with --uninstall"

prefix=${prefix%/}
case "$prefix" in
  /*) ;;
  *) die "--prefix must be an absolute path (got '$prefix')" ;;
esac
# The prefix is substituted into the unit file: keep it free of characters that sed, the
# shell or systemd's specifier expansion (%) would interpret.
[[ "$prefix" =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--prefix may contain only letters, digits and . _ / - (got '$prefix')"
case "$prefix" in
  /|/usr|/etc|/var|/bin|/sbin|/lib|/opt|/home|/root) die "--prefix $prefix is a system directory; use a directory of its own, e.g. /opt/edge-agent" ;;
  /home/*|/root/*|/run/user/*) die "--prefix $prefix is hidden from the service (ProtectHome=yes); use e.g. /opt/edge-agent" ;;
  /tmp/*|/var/tmp/*) warn "--prefix $prefix is invisible to the service (PrivateTmp=yes); fine for a dry run only" ;;
esac

root=""
if [ -n "${EDGE_AGENT_INSTALL_ROOT:-}" ]; then
  [ "$dry_run" = 1 ] || die "EDGE_AGENT_INSTALL_ROOT is a test hook and works only with --dry-run"
  root=${EDGE_AGENT_INSTALL_ROOT%/}
fi

venv=$prefix/venv
models=$prefix/models
wheels=$prefix/wheels
etc_dir=$root/etc/edge-agent
state_dir=$root/var/lib/edge-agent
unit_dir=$root/etc/systemd/system
unit=$unit_dir/edge-agent.service
dropin_dir=$unit_dir/edge-agent.service.d
jetson_dropin=$dropin_dir/50-jetson.conf
credential_dropin=$dropin_dir/10-credential.conf
user=edge-agent

if [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
  cmd="sudo $0"
  for a in "${original_args[@]}"; do cmd+=" $(printf '%q' "$a")"; done
  echo "$prog: must run as root (it installs packages, a system user and a service)." >&2
  echo "$prog: run: $cmd" >&2
  echo "$prog: or see what it would do: $0 --dry-run ${original_args[*]}" >&2
  exit 1
fi

# --- helpers ------------------------------------------------------------------------------
# Temporary files, removed at exit whatever happens.
cleanup_paths=()
cleanup() { [ ${#cleanup_paths[@]} -eq 0 ] || rm -rf "${cleanup_paths[@]}"; }
trap cleanup EXIT

# run CMD...: print the command, then run it unless this is a dry run.
run() {
  local line="+"
  for a in "$@"; do line+=" $(printf '%q' "$a")"; done
  echo "$line"
  [ "$dry_run" = 1 ] || "$@"
}

# write_file MODE OWNER:GROUP PATH < content: replace PATH only when the content differs.
write_file() {
  local mode=$1 owner=$2 path=$3 tmp
  if [ "$dry_run" = 1 ]; then
    # The comments are in the repository's copy.
    echo "+ write $path (mode $mode, owner $owner), content without comments:"
    { grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' || true; } | sed 's/^/    | /'
    return 0
  fi
  tmp=$(mktemp "$path.XXXXXX")
  cat >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    chmod "$mode" "$path"
    chown "$owner" "$path"
    note "$path is up to date"
  else
    mv -f "$tmp" "$path"
    note "wrote $path"
  fi
}

have_systemd() { [ -d /run/systemd/system ]; }

# The unit's SetCredential= fallback for a missing mqtt_password is documented from systemd
# 252 on (Raspberry Pi OS bookworm). Older ones (JetPack 6 has 249) get an always-present
# password file and a drop-in that removes the fallback, so nothing depends on it.
systemd_before_252() {
  local v
  v=$(systemctl --version 2>/dev/null | awk 'NR == 1 { print $2 }' || true)
  [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -lt 252 ]
}

# Board detection: Jetson by its L4T release file or device-tree model, Pi by the model.
board_model() { { tr -d '\0' </proc/device-tree/model; } 2>/dev/null || true; }
detect_board() {
  local model
  model=$(board_model)
  if [ -f /etc/nv_tegra_release ] || [[ "$model" == *Jetson* ]] || [[ "$model" == *NVIDIA* ]]; then
    echo jetson
  elif [[ "$model" == *"Raspberry Pi"* ]]; then
    echo raspberrypi
  else
    echo generic
  fi
}

pkg_installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

# --- uninstall ----------------------------------------------------------------------------
do_uninstall() {
  say "Stopping and removing edge-agent.service"
  if [ -f "$unit" ] || [ -d "$dropin_dir" ]; then
    if have_systemd; then
      run systemctl disable --now edge-agent.service || warn "systemctl disable failed; continuing"
    else
      run systemctl disable edge-agent.service || true
    fi
    if [ -f "$unit" ]; then run rm -f "$unit"; fi
    if [ -f "$jetson_dropin" ]; then run rm -f "$jetson_dropin"; fi
    if [ -f "$credential_dropin" ]; then run rm -f "$credential_dropin"; fi
    if [ -d "$dropin_dir" ]; then
      if [ "$purge" = 1 ]; then
        run rm -rf "$dropin_dir"
      elif [ -z "$(ls -A "$dropin_dir" 2>/dev/null)" ] || [ "$dry_run" = 1 ]; then
        # In a dry run the drop-in above is still there; rmdir keeps any local override.
        run rmdir --ignore-fail-on-non-empty "$dropin_dir"
      fi
    fi
    if have_systemd; then
      run systemctl daemon-reload
      run systemctl reset-failed edge-agent.service 2>/dev/null || true
    fi
  else
    note "no unit installed at $unit"
  fi

  say "Removing the venv and models under $prefix"
  # Only what install.sh created: --prefix may point somewhere with other files.
  local p
  for p in "$venv" "$models" "$wheels" "$prefix/README.md"; do
    if [ -e "$p" ]; then run rm -rf "$p"; else note "$p: not present"; fi
  done
  if [ -d "$prefix" ]; then run rmdir --ignore-fail-on-non-empty "$prefix"; fi

  say "Removing the system user $user"
  if getent passwd "$user" >/dev/null; then
    run userdel "$user"
  else
    note "user $user: not present"
  fi
  if getent group "$user" >/dev/null; then
    run groupdel "$user" || true
  fi

  if [ "$purge" = 1 ]; then
    say "Purging configuration and outbox"
    for p in "$etc_dir" "$state_dir"; do
      if [ -e "$p" ]; then run rm -rf "$p"; else note "$p: not present"; fi
    done
  else
    say "Keeping $etc_dir (configuration) and $state_dir (outbox, undelivered events)"
    note "delete them with: $prog --uninstall --purge"
  fi
  say "edge-agent uninstalled"
}

# --- install steps ------------------------------------------------------------------------
step_packages() {
  say "System packages"
  # python3-venv: the venv; libportaudio2: microphones (sounddevice); libglib2.0-0: used by
  # the OpenCV wheel; ca-certificates: TLS to the broker and PyPI; alsa-utils, v4l-utils:
  # arecord -l and v4l2-ctl --list-devices, to find device names for agent.yaml.
  local wanted=(python3-venv libportaudio2 libglib2.0-0 ca-certificates alsa-utils v4l-utils)
  local missing=() p
  if ! command -v dpkg-query >/dev/null; then
    warn "not a Debian-based system; install these yourself: ${wanted[*]}"
    return 0
  fi
  for p in "${wanted[@]}"; do pkg_installed "$p" || missing+=("$p"); done
  if [ ${#missing[@]} -eq 0 ]; then
    note "all installed: ${wanted[*]}"
    return 0
  fi
  run env DEBIAN_FRONTEND=noninteractive apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

step_user() {
  say "System user $user (groups video, audio)"
  # The unit sets SupplementaryGroups= itself; membership here is for manual runs
  # (sudo -u edge-agent edge-agent check-config ...).
  local g have groups=() add=()
  for g in video audio; do
    if getent group "$g" >/dev/null; then
      groups+=("$g")
    else
      warn "group $g does not exist; devices owned by it will not be accessible"
    fi
  done
  if getent passwd "$user" >/dev/null; then
    note "user $user exists"
    have=" $(id -nG "$user" 2>/dev/null || true) "
    for g in "${groups[@]}"; do
      if [[ "$have" != *" $g "* ]]; then run usermod -a -G "$g" "$user"; fi
    done
    return 0
  fi
  if [ ${#groups[@]} -gt 0 ]; then add=(--groups "$(IFS=,; echo "${groups[*]}")"); fi
  # Home is the state directory: libraries that write under ~ (CUDA's JIT cache) land in
  # the one place the service may write.
  run useradd --system --user-group --home-dir /var/lib/edge-agent --no-create-home \
    --shell /usr/sbin/nologin --comment "edge-agent service" "${add[@]}" "$user"
}

step_venv() {
  say "Python venv at $venv with edge-agent from $repo"
  local py=python3
  if [ "$dry_run" = 0 ] || command -v "$py" >/dev/null; then
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
      || die "edge-agent needs Python 3.10 or newer; $py is $("$py" -V 2>&1)"
  fi
  [ -d "$prefix" ] || run install -d -m 0755 "$prefix"
  if [ -x "$venv/bin/python" ]; then
    note "venv exists"
  else
    run "$py" -m venv "$venv"
  fi
  # pip builds a local project in place, which would leave root-owned build/ and *.egg-info
  # in the user's checkout: build from a copy of the sources instead.
  local stage=/tmp/edge-agent-src.XXXXXX
  if [ "$dry_run" = 0 ]; then
    stage=$(mktemp -d /tmp/edge-agent-src.XXXXXX)
    cleanup_paths+=("$stage")
  fi
  # What the build reads (pyproject.toml packages agent*; readme = README.md).
  local src=() f
  for f in pyproject.toml README.md agent LICENSE MANIFEST.in setup.py setup.cfg; do
    if [ -e "$repo/$f" ]; then src+=("$f"); fi
  done
  echo "+ copy $repo to $stage: ${src[*]}"
  if [ "$dry_run" = 0 ]; then
    tar -C "$repo" --exclude=__pycache__ -cf - "${src[@]}" | tar -C "$stage" -xf -
  fi
  # [models]: onnx, which 'edge-agent models fetch' uses to build one of the models.
  run "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "${stage}[models]"
  step_onnxruntime_gpu
  # Keep the checkout's README where Documentation= in the unit points.
  [ ! -f "$repo/README.md" ] || run install -m 0644 "$repo/README.md" "$prefix/README.md"
}

# On a Jetson, swap the CPU-only onnxruntime from PyPI for NVIDIA's onnxruntime-gpu build.
# Both distributions ship the same 'onnxruntime' package, so the CPU one is removed first.
# Where the wheel comes from, in order: --ort-wheel, a wheel kept from an earlier run, or
# a pip index the administrator configured (pip.conf or PIP_INDEX_URL/PIP_EXTRA_INDEX_URL,
# e.g. the JetPack index NVIDIA documents). PyPI itself has no aarch64 onnxruntime-gpu.
step_onnxruntime_gpu() {
  local wheel=""
  if [ -n "$ort_wheel" ]; then
    [ -f "$ort_wheel" ] || [ "$dry_run" = 1 ] || die "--ort-wheel $ort_wheel: no such file"
    wheel=$wheels/$(basename "$ort_wheel")
    [ -d "$wheels" ] || run install -d -m 0755 "$wheels"
    if [ "$(readlink -f "$ort_wheel")" != "$(readlink -f "$wheel")" ]; then
      # Keep only this one, so a later run without --ort-wheel reuses exactly it.
      run find "$wheels" -maxdepth 1 -name 'onnxruntime_gpu-*.whl' -delete
      run install -m 0644 "$ort_wheel" "$wheel"
    fi
  elif [ "$board" != jetson ]; then
    return 0
  else
    wheel=$(find "$wheels" -maxdepth 1 -name 'onnxruntime_gpu-*.whl' 2>/dev/null | sort -V | tail -n 1 || true)
  fi
  if [ -z "$wheel" ]; then
    if [ -n "${PIP_INDEX_URL:-}${PIP_EXTRA_INDEX_URL:-}" ] \
        || { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip config list 2>/dev/null | grep -q 'index-url'; }; then
      say "onnxruntime-gpu from the configured pip index"
      run install -d -m 0755 "$wheels"
      if run "$venv/bin/python" -m pip download --disable-pip-version-check --quiet --no-deps \
          --only-binary=:all: -d "$wheels" onnxruntime-gpu; then
        wheel=$(find "$wheels" -maxdepth 1 -name 'onnxruntime_gpu-*.whl' 2>/dev/null | sort -V | tail -n 1 || true)
        [ -n "$wheel" ] || wheel="$wheels/onnxruntime_gpu-VERSION.whl"
      else
        warn "no onnxruntime-gpu on the configured index; keeping the CPU-only onnxruntime"
        return 0
      fi
    else
      warn "Jetson: using the CPU-only onnxruntime. For CUDA/TensorRT pass --ort-wheel PATH to"
      warn "NVIDIA's onnxruntime-gpu wheel for this JetPack, or configure its pip index (README)."
      return 0
    fi
  fi
  say "onnxruntime-gpu: $wheel"
  run "$venv/bin/python" -m pip uninstall --disable-pip-version-check --quiet -y onnxruntime
  # --no-deps: its dependencies came with the CPU build; never let pip upgrade numpy here.
  run "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --force-reinstall --no-deps "$wheel"
  if [ "$dry_run" = 0 ]; then
    local providers
    providers=$("$venv/bin/python" -c 'import onnxruntime as o; print(" ".join(o.get_available_providers()))' 2>&1) \
      || die "onnxruntime-gpu does not import: $providers (a wheel built for NumPy 1.x needs: $venv/bin/pip install 'numpy<2')"
    note "onnxruntime providers: $providers"
    [[ "$providers" == *CUDAExecutionProvider* ]] || warn "CUDAExecutionProvider is missing: is this the wheel for this JetPack?"
  fi
}

step_models() {
  say "Models in $models"
  run install -d -m 0755 "$models"
  # The label catalogue (English and Korean names) is ours, not downloaded: always current.
  run install -d -m 0755 "$models/labels"
  run install -m 0644 "$repo"/models/labels/*.csv "$models/labels/"
  if [ "$fetch_models" = 0 ]; then
    note "skipped (--no-models): copy the model files into $models"
    return 0
  fi
  # Idempotent: files already present and intact are not downloaded again.
  run "$venv/bin/edge-agent" models fetch --dir "$models" --quiet
}

step_config() {
  say "Configuration in $etc_dir"
  # The starter opens nothing: broker on localhost, no camera or microphone until the
  # administrator adds them (config/agent.example.yaml documents every key).
  local example=$repo/config/starter.yaml
  # Root-owned and world-readable directory; agent.yaml readable by the agent's group only.
  if [ -d "$etc_dir" ]; then note "$etc_dir exists"; else run install -d -m 0755 "$etc_dir"; fi
  if [ -e "$etc_dir/agent.yaml" ]; then
    note "keeping the existing $etc_dir/agent.yaml (never overwritten)"
  elif [ -f "$example" ]; then
    run install -m 0640 -o root -g "$user" "$example" "$etc_dir/agent.yaml"
    note "a starter with no cameras or microphones: it connects to the broker on localhost and idles"
    note "edit $etc_dir/agent.yaml (broker, cameras, microphones), then: systemctl restart edge-agent"
  elif [ "$dry_run" = 1 ]; then
    warn "$example is missing from this checkout; a real install stops here"
  else
    die "$example is missing from this checkout"
  fi
  # The password is a systemd credential: only root (systemd) reads this file.
  if [ -e "$etc_dir/mqtt_password" ]; then
    run chown root:root "$etc_dir/mqtt_password"
    run chmod 0600 "$etc_dir/mqtt_password"
  else
    if systemd_before_252; then
      # An empty first line means "no password" to the agent.
      printf '\n' | write_file 0600 root:root "$etc_dir/mqtt_password"
    fi
    note "no MQTT password set: the agent connects without one"
    note "to set one: sudo sh -c 'umask 077; cat > $etc_dir/mqtt_password'; systemctl restart edge-agent"
  fi
}

render_unit() {
  sed "s#/opt/edge-agent#${prefix}#g" "$repo/systemd/edge-agent.service"
}

# Jetson: the GPU, DLA and video engines are device nodes outside the video4linux and ALSA
# classes; allow the ones this board has, by path (systemd resolves them at start).
render_jetson_dropin() {
  local nodes=() n
  for n in /dev/nvmap /dev/nvhost-* /dev/nvgpu/igpu0/* /dev/host1x-fence /dev/nvidiactl \
           /dev/nvidia[0-9]* /dev/nvidia-modeset /dev/dri/renderD*; do
    [ -c "$n" ] && nodes+=("$n")
  done
  echo "# Written by scripts/install.sh for this Jetson; re-run it after a JetPack upgrade."
  echo "[Service]"
  echo "# CUDA and TensorRT talk to the GPU through these nodes (group video on L4T)."
  if [ ${#nodes[@]} -eq 0 ]; then
    echo "# No Jetson GPU device nodes were found when this was written."
  fi
  for n in "${nodes[@]}"; do echo "DeviceAllow=$n rw"; done
  if getent group render >/dev/null; then
    echo "SupplementaryGroups=render"
  fi
  echo "# The CUDA JIT cache, in the one directory the service may write."
  echo "Environment=CUDA_CACHE_PATH=%S/edge-agent/cuda-cache"
}

step_unit() {
  say "systemd unit $unit"
  [ -f "$repo/systemd/edge-agent.service" ] || die "$repo/systemd/edge-agent.service is missing"
  render_unit | write_file 0644 root:root "$unit"
  if [ "$board" = jetson ] || systemd_before_252; then
    [ -d "$dropin_dir" ] || run install -d -m 0755 "$dropin_dir"
  fi
  if [ "$board" = jetson ]; then
    render_jetson_dropin | write_file 0644 root:root "$jetson_dropin"
  fi
  if systemd_before_252; then
    printf '%s\n' "# Written by scripts/install.sh: this systemd predates the documented" \
      "# SetCredential= fallback; $etc_dir/mqtt_password always exists instead." \
      "[Service]" "SetCredential=" | write_file 0644 root:root "$credential_dropin"
  fi
  if have_systemd; then
    run systemctl daemon-reload
    run systemctl enable edge-agent.service
  else
    # Image builds (chroot, container): enabling only makes symlinks and works offline.
    note "systemd is not running here: enabling only; it starts on the next boot"
    run systemctl enable edge-agent.service
    return 0
  fi
  if [ "$start" = 0 ]; then
    note "not started (--no-start); start it with: systemctl start edge-agent"
    return 0
  fi
  local ok=1
  if [ "$dry_run" = 0 ] && [ -f "$etc_dir/agent.yaml" ]; then
    # With the environment the unit gives the agent, so the check sees what it will see.
    run env EDGE_AGENT_MODELS__DIR="$models" EDGE_AGENT_OUTBOX__PATH=/var/lib/edge-agent/outbox \
      "$venv/bin/edge-agent" check-config -c "$etc_dir/agent.yaml" || ok=0
  fi
  if [ "$ok" = 0 ]; then
    warn "$etc_dir/agent.yaml is not valid yet; fix it, then: systemctl restart edge-agent"
    return 0
  fi
  # restart, not start: a re-run after an upgrade must load the new code.
  run systemctl restart edge-agent.service
  note "follow it with: journalctl -u edge-agent -f"
}

# --- main ---------------------------------------------------------------------------------
board=$(detect_board)
if [ "$dry_run" = 1 ]; then
  say "Dry run: nothing is changed; these are the steps and commands"
fi

if [ "$uninstall" = 1 ]; then
  do_uninstall
  exit 0
fi

codename=$(sed -n 's/^VERSION_CODENAME=//p' /etc/os-release 2>/dev/null | tr -d '"' || true)
codename=${codename:-unknown}
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
model=$(board_model)
say "Installing edge-agent: board $board${model:+ ($model)}, $codename, $arch, prefix $prefix"
case "$board/$codename" in
  raspberrypi/bookworm|jetson/jammy) ;;
  *) warn "tested on Raspberry Pi OS bookworm and Jetson JetPack 6 (jammy); this is $board/$codename" ;;
esac

if [ "$dry_run" = 0 ]; then
  # What runs here as root keeps its caches in a directory removed at exit: pip's wheel
  # cache, and the device id that importing onnxruntime writes under ~/.cache/Microsoft.
  # Both follow XDG_CACHE_HOME; without this an install leaves them in root's home.
  XDG_CACHE_HOME=$(mktemp -d /tmp/edge-agent-cache.XXXXXX)
  cleanup_paths+=("$XDG_CACHE_HOME")
  export XDG_CACHE_HOME
fi

step_packages
step_user
step_venv
step_models
step_config
step_unit
say "edge-agent installed"
