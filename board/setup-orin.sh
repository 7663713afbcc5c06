#!/usr/bin/env bash
# Jetson Orin set-up for referdino: power mode + clocks, camera udev rule, service user, systemd unit.
#
#   sudo board/setup-orin.sh [--mode N] [--binary PATH] [--dry-run]
#
# --mode N     nvpmodel power mode (default 0: the highest stock mode on AGX Orin / Orin NX (MAXN) and the
#              15 W mode on Orin Nano; list the modes of your module with `nvpmodel -p --verbose`)
# --binary P   install this referdino binary to /usr/local/bin (default: target/release/referdino if built)
# --dry-run    print what would be done, change nothing
set -euo pipefail

MODE=0
BINARY=""
DRY=0
HERE="$(cd "$(dirname "$0")" && pwd)"
while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE="$2"; shift 2 ;;
    --binary) BINARY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -z "$BINARY" ] && [ -x "$HERE/../target/release/referdino" ] && BINARY="$HERE/../target/release/referdino"

run() { echo "+ $*"; [ "$DRY" = 1 ] || "$@"; }

if [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
  echo "run as root (sudo), or with --dry-run" >&2; exit 1
fi
if [ -r /etc/nv_tegra_release ]; then
  echo "L4T: $(head -n1 /etc/nv_tegra_release)"
else
  echo "warning: /etc/nv_tegra_release not found; this does not look like a Jetson" >&2
fi
if command -v dpkg >/dev/null; then
  dpkg -l 2>/dev/null | awk '/^ii/ && ($2 ~ /^(nvidia-jetpack|libnvinfer[0-9]+|cuda-cudart-[0-9-]+)$/) {print "  " $2 " " $3}' || true
fi

# 1. Power mode and clocks (jetson_clocks is also re-applied by the service at every start).
if command -v nvpmodel >/dev/null || [ "$DRY" = 1 ]; then
  run nvpmodel -m "$MODE"
  run jetson_clocks
else
  echo "warning: nvpmodel not found; skipping power mode" >&2
fi

# 2. Cameras: group permissions + stable names.
run install -m 0644 "$HERE/99-referdino-cameras.rules" /etc/udev/rules.d/99-referdino-cameras.rules
run udevadm control --reload-rules
run udevadm trigger --subsystem-match=video4linux

# 3. Service user and directories.
if ! id referdino >/dev/null 2>&1; then
  run useradd --system --home-dir /var/lib/referdino --shell /usr/sbin/nologin --groups video referdino
fi
run install -d -o referdino -g referdino -m 0755 /var/lib/referdino /var/lib/referdino/engines
run install -d -m 0755 /etc/referdino
if [ -n "$BINARY" ]; then
  run install -m 0755 "$BINARY" /usr/local/bin/referdino
fi
# The bundled models (`referdino demo`, `run` without --weights), where the installed binary looks:
# ../share/referdino beside it.
for m in referdino-synth referdino-tiny; do
  run install -d -m 0755 /usr/local/share/referdino/$m
  run install -m 0644 "$HERE/../tests/fixtures/$m"/{config.json,*.pth,*.safetensors} /usr/local/share/referdino/$m/ 2>/dev/null || true
done
if [ ! -e /etc/referdino/referdino.env ]; then
  run install -m 0644 "$HERE/referdino.env" /etc/referdino/referdino.env
  echo "note: set the camera, prompt and engine directory in /etc/referdino/referdino.env before starting the service"
fi

# 4. systemd unit (restarts on failure).
run install -m 0644 "$HERE/referdino.service" /etc/systemd/system/referdino.service
run systemctl daemon-reload
run systemctl enable referdino.service
echo "done: start with 'sudo systemctl start referdino', follow with 'journalctl -fu referdino'"
