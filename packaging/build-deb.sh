#!/usr/bin/env bash
# Build a FleetEdge Debian package from this checkout, for this machine's architecture (build on an arm64
# board, or an arm64 container, for a Raspberry Pi or a Jetson):
#   packaging/build-deb.sh [--package agent|coordinator] [--version X.Y.Z] [--out DIR]
# The package holds a self-contained virtual environment at /opt/fleetedge/<package> (the code and its
# wheels, on the system's python3), /usr/bin/fleet-<package>, /etc/fleetedge/<package>.toml (a conffile,
# kept on upgrade) and the systemd unit; the agent's also a udev rule example.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$src/pyproject.toml" | head -1)"
out="$src/dist"
package=agent
while [ $# -gt 0 ]; do
  case "$1" in
    --package) package="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (use --package agent|coordinator, --version X.Y.Z, --out DIR)" >&2
       exit 2 ;;
  esac
done
case "$package" in
  agent) dialout=yes; config_doc=agent-config.md ;;
  coordinator) dialout=no; config_doc=coordinator-config.md ;;
  *) echo "build-deb.sh: --package must be agent or coordinator, not $package" >&2; exit 2 ;;
esac
name="fleetedge-$package"
arch="$(dpkg --print-architecture)"
prefix="/opt/fleetedge/$package"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

echo "==> $name $version: virtual environment for $prefix ($arch)"
mkdir -p "$root$prefix"
/usr/bin/python3 -m venv "$root$prefix"
"$root$prefix/bin/python" -m pip install -q --no-cache-dir --upgrade pip
# Not editable: the package carries the code itself.
"$root$prefix/bin/python" -m pip install -q --no-cache-dir "$src[$package]"
# The venv was made under the staging root: make every script point at where it will live.
grep -rlI --null "$root$prefix" "$root$prefix/bin" | xargs -0 sed -i "s|$root$prefix|$prefix|g"
sed -i "s|$root$prefix|$prefix|g" "$root$prefix/pyvenv.cfg"
find "$root$prefix" -name '__pycache__' -type d -prune -exec rm -rf {} +

echo "==> files"
doc="$root/usr/share/doc/$name"
install -d "$root/usr/bin" "$root/etc/fleetedge" "$root/lib/systemd/system" "$root/var/lib/fleetedge" "$doc"
ln -s "$prefix/bin/fleet-$package" "$root/usr/bin/fleet-$package"
install -m 0640 "$src/packaging/deb/$package/$package.toml" "$root/etc/fleetedge/$package.toml"
install -m 0644 "$src/packaging/systemd/$name.service" "$root/lib/systemd/system/"
install -m 0644 "$src/README.md" "$src/docs/$config_doc" "$doc/"
if [ "$package" = agent ]; then
  install -d "$doc/udev"
  install -m 0644 "$src/packaging/udev/99-fleetedge.rules" "$doc/udev/"
fi

echo "==> control"
install -d "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" \
    "$src/packaging/deb/$package/control.in" > "$root/DEBIAN/control"
install -m 0644 "$src/packaging/deb/$package/conffiles" "$root/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  sed -e "s/@PACKAGE@/$name/g" -e "s/@SERVICE@/$name.service/g" -e "s/@CONFIG@/$package.toml/g" \
      -e "s/@DIALOUT@/$dialout/g" "$src/packaging/deb/common/$script.in" > "$root/DEBIAN/$script"
  chmod 0755 "$root/DEBIAN/$script"
done

mkdir -p "$out"
deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
echo "==> built $deb ($(du -h "$deb" | cut -f1))"
