#!/usr/bin/env bash
# Build the fleetedge-agent Debian package from this checkout, for this machine's architecture (build on
# an arm64 board, or an arm64 container, for a Raspberry Pi or a Jetson):
#   packaging/build-deb.sh [--version X.Y.Z] [--out DIR]
# The package holds a self-contained virtual environment at /opt/fleetedge/agent (the agent and its
# wheels, on the system's python3), /usr/bin/fleet-agent, /etc/fleetedge/agent.toml (a conffile, kept on
# upgrade), the systemd unit and a udev rule example.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$src/pyproject.toml" | head -1)"
out="$src/dist"
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (use --version X.Y.Z, --out DIR)" >&2; exit 2 ;;
  esac
done
arch="$(dpkg --print-architecture)"
prefix=/opt/fleetedge/agent
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

echo "==> virtual environment for $prefix ($arch)"
mkdir -p "$root$prefix"
/usr/bin/python3 -m venv "$root$prefix"
"$root$prefix/bin/python" -m pip install -q --no-cache-dir --upgrade pip
# Not editable: the package carries the code itself.
"$root$prefix/bin/python" -m pip install -q --no-cache-dir "$src[agent]"
# The venv was made under the staging root: make every script point at where it will live.
grep -rlI --null "$root$prefix" "$root$prefix/bin" | xargs -0 sed -i "s|$root$prefix|$prefix|g"
sed -i "s|$root$prefix|$prefix|g" "$root$prefix/pyvenv.cfg"
find "$root$prefix" -name '__pycache__' -type d -prune -exec rm -rf {} +

echo "==> files"
install -d "$root/usr/bin" "$root/etc/fleetedge" "$root/lib/systemd/system" "$root/var/lib/fleetedge" \
           "$root/usr/share/doc/fleetedge-agent/udev"
ln -s "$prefix/bin/fleet-agent" "$root/usr/bin/fleet-agent"
install -m 0640 "$src/packaging/deb/agent/agent.toml" "$root/etc/fleetedge/agent.toml"
install -m 0644 "$src/packaging/systemd/fleetedge-agent.service" "$root/lib/systemd/system/"
install -m 0644 "$src/packaging/udev/99-fleetedge.rules" "$root/usr/share/doc/fleetedge-agent/udev/"
install -m 0644 "$src/README.md" "$src/docs/agent-config.md" "$root/usr/share/doc/fleetedge-agent/"

echo "==> control"
install -d "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$src/packaging/deb/agent/control.in" > "$root/DEBIAN/control"
install -m 0644 "$src/packaging/deb/agent/conffiles" "$root/DEBIAN/conffiles"
install -m 0755 "$src/packaging/deb/agent/postinst" "$src/packaging/deb/agent/prerm" \
                "$src/packaging/deb/agent/postrm" "$root/DEBIAN/"

mkdir -p "$out"
deb="$out/fleetedge-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "==> built $deb ($(du -h "$deb" | cut -f1))"
