#!/usr/bin/env bash
# Build a FleetEdge Debian package from this checkout:
#   packaging/build-deb.sh [--package agent|coordinator] [--arch amd64|arm64] [--version X.Y.Z] [--out DIR]
# The package holds a self-contained virtual environment at /opt/fleetedge/<package> (the code and its
# wheels, on the system's python3.X, the one building it), /usr/bin/fleet-<package>, /etc/fleetedge/<package>.toml
# (a conffile, kept on upgrade) and the systemd unit; the agent's also a udev rule example.
# --arch defaults to this machine's. Another architecture is cross-built: the same code with PyPI's
# manylinux wheels for it, for a target whose Debian has the same python3.X (Debian 12 and Raspberry Pi OS
# 12 have 3.11); JetPack's Ubuntu has another, so build on the Jetson itself there.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$src/pyproject.toml" | head -1)"
out="$src/dist"
package=agent
host_arch="$(dpkg --print-architecture)"
arch="$host_arch"
while [ $# -gt 0 ]; do
  case "$1" in
    --package) package="$2"; shift 2 ;;
    --arch) arch="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown option $1 (use --package agent|coordinator, --arch amd64|arm64," \
            "--version X.Y.Z, --out DIR)" >&2
       exit 2 ;;
  esac
done
case "$package" in
  agent) dialout=yes; config_doc=agent-config.md ;;
  coordinator) dialout=no; config_doc=coordinator-config.md ;;
  *) echo "build-deb.sh: --package must be agent or coordinator, not $package" >&2; exit 2 ;;
esac
case "$arch" in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "build-deb.sh: --arch must be amd64 or arm64, not $arch" >&2; exit 2 ;;
esac
# The environment runs on the python3.X it was built with; the package depends on exactly that one.
python_version="$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
python="/usr/bin/python$python_version"
name="fleetedge-$package"
prefix="/opt/fleetedge/$package"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
root="$stage/root"

echo "==> $name $version: virtual environment for $prefix ($arch, python$python_version)"
mkdir -p "$root$prefix"
"$python" -m venv "$root$prefix"
"$root$prefix/bin/python" -m pip install -q --no-cache-dir --upgrade pip
if [ "$arch" = "$host_arch" ]; then
  # Not editable: the package carries the code itself.
  "$root$prefix/bin/python" -m pip install -q --no-cache-dir "$src[$package]"
else
  echo "==> cross-building for $arch: manylinux wheels for $machine, CPython $python_version"
  "$root$prefix/bin/python" -m pip wheel -q --no-cache-dir --no-deps -w "$stage/wheel" "$src"
  wheel="$(ls "$stage"/wheel/*.whl)"
  site="$("$root$prefix/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
  # Every glibc up to Debian 12's 2.36: the newest wheel a Raspberry Pi OS or Debian 12 board can load.
  platforms=(--platform "manylinux2014_$machine")
  for glibc in 17 26 27 28 31 34 35 36; do platforms+=(--platform "manylinux_2_${glibc}_$machine"); done
  "$root$prefix/bin/python" -m pip install -q --no-cache-dir --only-binary=:all: --implementation cp \
      --python-version "$python_version" "${platforms[@]}" --target "$site" "$wheel[$package]"
  # --target puts the commands beside the packages; they belong in the environment's bin.
  mv "$site/bin/"* "$root$prefix/bin/"
  rmdir "$site/bin"
fi
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
# Debian's machine-readable copyright file; the bundled libraries' own licences are in their dist-info.
cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fleetedge

Files: *
Copyright: the FleetEdge developers
License: Apache-2.0
 On Debian systems the full text of the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
EOF
chmod 0644 "$doc/copyright"
if [ "$package" = agent ]; then
  install -d "$doc/udev"
  install -m 0644 "$src/packaging/udev/99-fleetedge.rules" "$doc/udev/"
fi

echo "==> control"
install -d "$root/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s/@PYTHON@/python$python_version/" \
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
