#!/usr/bin/env bash
# Build asme's Debian package with dpkg-deb (in every Debian and Ubuntu; no cargo plugin).
#
# Usage: packaging/deb.sh [--binary PATH] [--out DIR]
#   --binary PATH  the asme binary to pack; by default it is built here
#                  (cargo build --release --locked: the static release binary)
#   --out DIR      where the .deb goes (default: target/debian); its path is printed
#   DEBFULLNAME, DEBEMAIL (Debian's usual variables) name the maintainer.
#
# The package holds:
#   /usr/bin/asme                                   the static binary (stripped)
#   /usr/libexec/docker/cli-plugins/docker-asme     -> /usr/bin/asme: `docker asme` for everyone
#   /usr/share/bash-completion/completions/asme     completions, from the binary itself
#   /usr/share/zsh/vendor-completions/_asme
#   /usr/share/fish/vendor_completions.d/asme.fish
#   /usr/share/man/man1/asme.1.gz, asme-*.1.gz      man pages, from the binary itself
#   /usr/share/doc/asme/README.md.gz, copyright
#
# Completions and man pages are made by the very binary packed (`asme completions SHELL`,
# `asme manpages DIR`), from its clap definition: they cannot disagree with it, and build.rs
# stays free of the CLI's code. The package has no dependency (the binary is static) and no
# conffiles: `apt-get remove` takes away everything it installed. What asme makes for a user
# at run time (its agent container, the volume driver, the context, a user's `docker asme`
# link) belongs to that user and stays; the package's description and prerm say how to
# remove it.
set -euo pipefail

die() {
	printf 'deb.sh: %s\n' "$*" >&2
	exit 1
}

root_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
binary=""
out=""
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary=${2:?--binary needs a path}; shift 2 ;;
	--out) out=${2:?--out needs a folder}; shift 2 ;;
	-h | --help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument: $1 (see --help)" ;;
	esac
done

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian's dpkg package)"
target_dir=${CARGO_TARGET_DIR:-$root_dir/target}
if [ -z "$binary" ]; then
	(cd "$root_dir" && cargo build --release --locked --quiet)
	# .cargo/config.toml builds for x86_64-unknown-linux-gnu with +crt-static.
	binary=$target_dir/x86_64-unknown-linux-gnu/release/asme
fi
[ -x "$binary" ] || die "$binary is not an executable"
out=${out:-$target_dir/debian}

# The package declares no dependency: the binary must need no loader and no library.
if command -v readelf >/dev/null; then
	if readelf -l "$binary" | grep -q INTERP || readelf -d "$binary" | grep -q '(NEEDED)'; then
		die "$binary is dynamically linked; asme's package holds the static build"
	fi
fi

version=$("$binary" --version) # asme 0.1.0 (build 0123456789abcdef)
version=${version#asme }
version=${version%% *}
[[ $version =~ ^[0-9][0-9A-Za-z.+~-]*$ ]] || die "cannot read the version from $binary --version"
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf -- "$stage"' EXIT
chmod 0755 "$stage"
umask 022

install -D -m 0755 "$binary" "$stage/usr/bin/asme"
# dh_strip's job: the debugging symbols are most of an unstripped binary.
if command -v strip >/dev/null; then
	strip --strip-unneeded "$stage/usr/bin/asme"
fi
asme=$stage/usr/bin/asme

# `docker asme`: docker's system-wide plugin folder (Debian's docker packages use it too).
install -d "$stage/usr/libexec/docker/cli-plugins"
ln -s ../../../bin/asme "$stage/usr/libexec/docker/cli-plugins/docker-asme"

install -d "$stage/usr/share/bash-completion/completions" \
	"$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$asme" completions bash >"$stage/usr/share/bash-completion/completions/asme"
"$asme" completions zsh >"$stage/usr/share/zsh/vendor-completions/_asme"
"$asme" completions fish >"$stage/usr/share/fish/vendor_completions.d/asme.fish"

"$asme" manpages "$stage/usr/share/man/man1"
gzip -9n "$stage"/usr/share/man/man1/*.1

install -d "$stage/usr/share/doc/asme"
gzip -9n <"$root_dir/README.md" >"$stage/usr/share/doc/asme/README.md.gz"
license=$(find "$root_dir" -maxdepth 1 -iname 'LICEN[CS]E*' -print -quit)
{
	echo 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/'
	echo 'Upstream-Name: asme'
	echo
	echo 'Files: *'
	if [ -n "$license" ]; then
		echo "Copyright: $(grep -m1 '^Copyright' "$license" | sed 's/^Copyright (c) //')"
		echo "License: $(sed -n 's/^license = "\(.*\)"$/\1/p' "$root_dir/Cargo.toml")"
		sed 's/^$/./; s/^/ /' "$license"
	else
		echo 'License: none declared yet (the source has no licence file)'
	fi
} >"$stage/usr/share/doc/asme/copyright"
find "$stage" -type f -exec chmod 0644 {} + && chmod 0755 "$asme"

install -d "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: asme
Version: $version
Architecture: $arch
Maintainer: ${DEBFULLNAME:-asme developers} <${DEBEMAIL:-asme@localhost}>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Section: admin
Priority: optional
Recommends: docker.io | docker-ce-cli | podman
Description: run containers as me: what containers write into your folders stays yours
 asme run is a drop-in docker run that makes what a container writes into
 bind-mounted folders belong to you (idmapped mounts, its own FUSE mapping, or
 the command run as you), without sudo, image rebuilds or daemon changes.
 Also asme fix (give a root-owned tree back, safely), asme mount (a bindfs
 replacement), a volume driver, a Docker API proxy, and docker asme (a Docker
 CLI plugin).
 .
 Removing this package leaves what asme made for each user at run time; each
 user removes theirs with: asme plugin uninstall (the volume driver),
 asme context uninstall (the context), asme agent stop (the agent container
 and image), asme uninstall --cli-plugin (their own docker asme link).
EOF
cat >"$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
# Say what the package leaves: what asme made for users belongs to them.
set -e
if [ "$1" = remove ]; then
	echo "asme: each user's volume driver, context, agent and docker asme link stay; remove" \
		"them with: asme plugin uninstall; asme context uninstall; asme agent stop;" \
		"asme uninstall --cli-plugin" >&2
fi
EOF
chmod 0755 "$stage/DEBIAN/prerm"
(cd "$stage" && find usr -type f -exec md5sum {} + | sort -k2) >"$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb=$out/asme_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
