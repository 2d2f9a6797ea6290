#!/bin/sh
# Build the tokend Debian package into dist/ and check it with lintian.
#
# Usage: packaging/build-deb.sh   (from anywhere; `make deb` runs it)
# Needs Debian 12, root or sudo for the missing build tools, and PyPI.
set -eu

cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$ROOT/build/packaging
SRC=$WORK/src
DIST=$ROOT/dist
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

# Debian's own tools first: a compiler and dpkg-dev (build-essential), lintian.
missing=""
for pkg in build-essential lintian; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $pkg"
done
if [ -n "$missing" ]; then
	echo "installing Debian packages:$missing"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# A clean source tree: the application, the docs it ships and debian/.
rm -rf "$SRC"
mkdir -p "$SRC" "$DIST"
tar --exclude=__pycache__ -cf - tokend pyproject.toml README.md docs packaging |
	tar -xf - -C "$SRC"
cp -a packaging/debian "$SRC/debian"
for file in tokend.service tokend.sysusers tokend.tmpfiles; do
	cp systemd/$file "$SRC/debian/$file"
done

cd "$SRC"
version=$(dpkg-parsechangelog -S Version)
upstream=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' tokend/__init__.py)
if [ "$version" != "$upstream" ]; then
	echo "packaging/debian/changelog is at $version but tokend is $upstream:" \
		"add a changelog entry (dch -v $upstream)" >&2
	exit 1
fi
if ! dpkg-checkbuilddeps 2>/dev/null; then
	echo "installing the build dependencies from debian/control"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get build-dep -y -qq "$SRC" >/dev/null
fi

dpkg-buildpackage --build=binary --no-sign
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=tokend_${version}_${arch}.deb
mv "$WORK/$deb" "$DIST/$deb"
echo "built $DIST/$deb ($(du -k "$DIST/$deb" | cut -f1) KiB)"

# Errors fail the build; the warnings that remain are explained in
# packaging/README.md.
lintian --fail-on error --display-info "$DIST/$deb"
