#!/usr/bin/env bash
# Install FleetEdge from this checkout on a Debian machine: system packages, then a virtual
# environment in .venv with the project. `--dev` adds what the tests need (Mosquitto, Redis, test tools).
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    -h|--help) echo "usage: scripts/install.sh [--dev]"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (use --dev or nothing)" >&2; exit 2 ;;
  esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
if [ "$dev" -eq 1 ]; then
  command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || packages+=(mosquitto)
  command -v redis-server >/dev/null 2>&1 || packages+=(redis-server)
  # The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download needs the internet).
  command -v chromium >/dev/null 2>&1 || packages+=(chromium chromium-driver)
  # The packaging tests build a .deb and check the systemd units.
  command -v dpkg-deb >/dev/null 2>&1 || packages+=(dpkg)
  command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
  # ...and cross-build the agent's package for the other architecture (arm64 on a PC) and run it under
  # user-mode emulation in a Debian tree of that architecture.
  command -v qemu-aarch64-static >/dev/null 2>&1 || packages+=(qemu-user-static)
  command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || packages+=(debootstrap)
fi
if [ "${#packages[@]}" -gt 0 ]; then
  echo "==> installing Debian packages: ${packages[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

echo "==> creating .venv"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ "$dev" -eq 1 ]; then extras="dev"; else extras="agent,coordinator,sim"; fi
echo "==> installing fleetedge[$extras]"
.venv/bin/python -m pip install -q -e ".[$extras]"
echo "==> installed: $(.venv/bin/fleet-agent --version), $(.venv/bin/fleet-coordinator --version), $(.venv/bin/fleet-sim --version)"
