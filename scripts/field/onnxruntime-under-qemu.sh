#!/usr/bin/env bash
# Why onnxruntime 1.30+ crashed in the emulated arm64 install, one line per case: each
# onnxruntime version imports and loads the YOLOv3-tiny model in the arm64 root file system
# of scripts/check-arm64.sh (chroot, /proc and /sys mounted), under
#   - qemu-user as installed (Debian bookworm: 7.2), which shows the host's /proc/cpuinfo,
#   - the same with a Raspberry Pi 4's /proc/cpuinfo mounted over it,
#   - qemu-user 10.0 from bookworm-backports (unpacked under var/field, not installed),
#     which emulates an ARM /proc/cpuinfo.
# Run as root after scripts/check-arm64.sh has built var/field/rootfs-arm64:
#
#   sudo scripts/field/onnxruntime-under-qemu.sh [VERSION...]    # default 1.27.0 1.30.0 1.32.0
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=scripts/field/lib.sh
. "$repo/scripts/field/lib.sh"

case "${1:-}" in
  -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
esac
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.27.0 1.30.0 1.32.0)
[ "$(id -u)" = 0 ] || die "must run as root (chroot, mount)"
field=$repo/var/field
[ -d "$field/rootfs-arm64" ] || die "no $field/rootfs-arm64: run scripts/check-arm64.sh first"
[ -f "$repo/models/yolov3-tiny-coco.onnx" ] || die "run .venv/bin/edge-agent models fetch first"
root=$field/ort-root
wheels=$field/ort-wheels
log=$field/onnxruntime-under-qemu.log
: >"$log"

cleanup() {
  umount "$root/proc/cpuinfo" 2>/dev/null || true
  umount -R "$root/sys" 2>/dev/null || true
  umount "$root/proc" 2>/dev/null || true
}
trap cleanup EXIT

say "wheels for aarch64 in $wheels"
mkdir -p "$wheels"
for v in "${versions[@]}"; do
  "$repo/.venv/bin/python" -m pip download -q -d "$wheels" --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp \
    --abi cp311 --abi abi3 --abi none "onnxruntime==$v" >>"$log" 2>&1 \
    || die "pip could not download onnxruntime $v for aarch64 (log: $log)"
done

# qemu-user 10 from bookworm-backports: the package is downloaded and unpacked, not installed.
qemu10=$field/qemu-backports/usr/bin/qemu-aarch64
if [ ! -x "$qemu10" ]; then
  say "qemu-user from bookworm-backports, unpacked in $field/qemu-backports"
  apt=$field/apt-backports
  mkdir -p "$apt/lists/partial"
  echo "deb http://deb.debian.org/debian bookworm-backports main" >"$apt/sources.list"
  opts=(-o Dir::Etc::sourcelist="$apt/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$apt/lists")
  apt-get -q "${opts[@]}" update >>"$log" 2>&1
  (cd "$apt" && apt-get -q "${opts[@]}" download qemu-user/bookworm-backports >>"$log" 2>&1)
  dpkg-deb -x "$(find "$apt" -maxdepth 1 -name 'qemu-user_*.deb' | sort | tail -n 1)" \
    "$field/qemu-backports"
fi

say "arm64 root for the experiment in $root"
fresh_copy "$field/rootfs-arm64" "$root"
mkdir -p "$root/w" "$root/m"
cp "$wheels"/*.whl "$root/w/"
cp "$repo/models/yolov3-tiny-coco.onnx" "$root/m/"
cp "$qemu10" "$root/qemu10"
chroot "$root" /usr/bin/env -i PATH="$field_path" python3 -m venv /v
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --make-rslave "$root/sys"
for n in 0 1; do
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$n"
  printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
done >"$root/cpuinfo-pi4"

probe='import onnxruntime as o; s = o.InferenceSession("/m/yolov3-tiny-coco.onnx"); print("ok", o.__version__)'
try() {  # try LABEL [PREFIX...]: import and load the model; "ok" or how it died
  local label=$1 out rc
  shift
  out=$(timeout 600 chroot "$root" /usr/bin/env -i PATH="$field_path" HOME=/root "$@" \
    /v/bin/python -c "$probe" 2>&1) && rc=0 || rc=$?
  echo "$out" >>"$log"
  if [ "$rc" = 0 ]; then
    printf '%-10s %-44s ok\n' "$v" "$label"
  elif [ "$rc" -gt 128 ]; then
    printf '%-10s %-44s died with signal %s\n' "$v" "$label" "$((rc - 128))"
  else
    printf '%-10s %-44s exit %s: %s\n' "$v" "$label" "$rc" "$(tail -n 1 <<<"$out")"
  fi
}
host_qemu=$(qemu-aarch64-static --version | awk 'NR == 1 { print $3 }')
new_qemu=$("$qemu10" --version | awk 'NR == 1 { print $3 }')
for v in "${versions[@]}"; do
  chroot "$root" /usr/bin/env -i PATH="$field_path" /v/bin/pip install -q --no-index \
    --find-links /w --force-reinstall "onnxruntime==$v" >>"$log" 2>&1 \
    || die "onnxruntime $v did not install (log: $log)"
  try "qemu $host_qemu, the emulator's /proc/cpuinfo"
  mount --bind "$root/cpuinfo-pi4" "$root/proc/cpuinfo"
  try "qemu $host_qemu, a Raspberry Pi 4's /proc/cpuinfo"
  umount "$root/proc/cpuinfo"
  try "qemu $new_qemu, the emulator's /proc/cpuinfo" /qemu10
done
