#!/usr/bin/env bash
# Build the local docker images used by asme's integration tests.
#
# Usage: tests/images/build.sh [IMAGE...]     (run as root)
#   IMAGE is one of: busybox nopasswd user1000 debian debian-doc postgres (an
#   "asme-test/" prefix is accepted). Without arguments every image is built.
#
# No registry is needed: every image is made with `docker import` from a
# rootfs assembled on this machine. Each image carries the label
# asme.recipe=<sha256 of this file>; an image whose label matches is kept
# ("ok"), anything else is (re)built ("built"). Editing this file therefore
# rebuilds every image.
#
# Images:
#   asme-test/busybox   static busybox, /etc/passwd and /etc/group with root only
#   asme-test/nopasswd  the same without /etc/passwd and /etc/group
#   asme-test/user1000  busybox plus user app (1000:1000), USER app
#   asme-test/debian    debootstrap --variant=minbase bookworm + python3, git
#   asme-test/debian-doc  debootstrap --variant=minbase bookworm + man-db,
#                       bash-completion, zsh, fish: a clean Debian in which a .deb is
#                       installed and its man pages and completions are checked
#   asme-test/postgres  debootstrap --variant=minbase bookworm + postgresql (15), with an
#                       entrypoint like the official image's: as root it makes $PGDATA
#                       (/var/lib/postgresql/data), chown -R's it to postgres, chmod 700,
#                       drops to postgres (setpriv), initdb's it if empty and runs
#                       postgres on a unix socket in /tmp only (no TCP; PGHOST=/tmp
#                       and PGUSER=postgres, so psql and pg_isready need no options).
#                       docker stop's SIGTERM is a smart shutdown: as fast as
#                       postgres's fast one once no client is connected
#                       (docker import cannot set STOPSIGNAL).
#
# Environment:
#   ASME_TEST_CACHE         cache and lock directory (default /var/cache/asme-tests)
#   ASME_TEST_DEBIAN_MIRROR Debian mirror for debootstrap; by default it is
#                           read from this machine's apt sources.
#
# The debootstrapped rootfs (takes minutes) is cached as
# $ASME_TEST_CACHE/debian-bookworm-minbase.tar (postgres:
# $ASME_TEST_CACHE/postgres-bookworm-minbase.tar, debian-doc:
# $ASME_TEST_CACHE/debian-doc-bookworm-minbase.tar); delete it to force a fresh
# debootstrap. Concurrent runs are serialised with flock on
# $ASME_TEST_CACHE/build.lock.

# Most functions are reached indirectly ("build_$name", the trap), which
# ShellCheck 0.9 reports as unreachable code (SC2317).
# shellcheck disable=SC2317
set -euo pipefail

readonly PREFIX=asme-test
readonly ALL_IMAGES=(busybox nopasswd user1000 debian debian-doc postgres)
readonly SUITE=bookworm
readonly BUSYBOX_PATH=/bin
readonly DEBIAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

die() {
	printf 'build.sh: %s\n' "$*" >&2
	exit 1
}

note() {
	printf 'build.sh: %s\n' "$*" >&2
}

usage() {
	printf 'usage: %s [%s]...\n' "$0" "$(IFS='|'; echo "${ALL_IMAGES[*]}")"
}

# Globals shared with the EXIT/INT/TERM trap.
work=""
child_pid=""
CACHE=""
DEBIAN_TAR=""
DEBIAN_DOC_TAR=""
POSTGRES_TAR=""
recipe=""

# ---------------------------------------------------------------- scratch space
# Print the mount points at or below directory $1.
mounts_below() {
	awk -v p="$1" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo
}

# Unmount anything left mounted below $1 (debootstrap mounts proc/sys inside
# its target), then delete it without crossing into other filesystems.
remove_tree() {
	local dir=$1 mnt
	[ -e "$dir" ] || return 0
	mounts_below "$dir" |
		sort -r |
		while IFS= read -r mnt; do
			umount -l -- "$mnt" 2>/dev/null || true
		done
	rm -rf --one-file-system -- "$dir"
}

cleanup() {
	if [ -n "$child_pid" ]; then
		kill "$child_pid" 2>/dev/null || true
		wait "$child_pid" 2>/dev/null || true
		child_pid=""
	fi
	if [ -n "$work" ]; then
		remove_tree "$work"
		work=""
	fi
}
# ---------------------------------------------------------------- helpers
image_is_current() {
	local label
	label=$(docker image inspect --format '{{ index .Config.Labels "asme.recipe" }}' "$1" 2>/dev/null) || return 1
	[ "$label" = "$recipe" ]
}

# import TAG -c CHANGE... : import a tar stream read from stdin as TAG.
# A previous image of the same tag is removed when nothing uses it any more.
import_image() {
	local tag=$1 old new
	shift
	old=$(docker image inspect --format '{{ .Id }}' "$tag" 2>/dev/null) || old=""
	new=$(docker import "$@" -c "LABEL asme.recipe=$recipe" - "$tag")
	if [ -n "$old" ] && [ "$old" != "$new" ]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
}

# tar a rootfs directory to stdout with numeric ownership.
tar_rootfs() {
	tar --numeric-owner -C "$1" -cf - .
}

# ---------------------------------------------------------------- busybox rootfs
host_busybox=/bin/busybox

# make_busybox_rootfs DIR [nopasswd]
make_busybox_rootfs() {
	local root=$1 mode=${2:-} applet
	[ -x "$host_busybox" ] || die "$host_busybox not found; install it with: apt-get install busybox-static"
	# The image has no libc, so busybox must not need a dynamic loader.
	if command -v readelf >/dev/null 2>&1; then
		if readelf -l "$host_busybox" 2>/dev/null | grep -q 'INTERP' ||
			readelf -d "$host_busybox" 2>/dev/null | grep -q '(NEEDED)'; then
			die "$host_busybox is dynamically linked; install busybox-static"
		fi
	elif command -v file >/dev/null 2>&1; then
		file -L "$host_busybox" | grep -q 'statically linked' ||
			die "$host_busybox is not statically linked; install busybox-static"
	else
		die "need readelf (binutils) or file to check that $host_busybox is static"
	fi

	mkdir -p -- "$root"
	chmod 0755 "$root"
	install -d -m 0755 "$root/bin" "$root/etc" "$root/home"
	install -d -m 1777 "$root/tmp"
	install -d -m 0700 "$root/root"
	install -m 0755 "$host_busybox" "$root/bin/busybox"
	"$host_busybox" --list | while IFS= read -r applet; do
		case "$applet" in
		'' | busybox | */*) continue ;;
		esac
		ln -sf busybox "$root/bin/$applet"
	done
	[ -e "$root/bin/sh" ] || die "$host_busybox has no sh applet"

	if [ "$mode" != nopasswd ]; then
		printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
		printf '%s\n' 'root:x:0:' >"$root/etc/group"
		chmod 0644 "$root/etc/passwd" "$root/etc/group"
	fi
}

build_busybox() {
	local root=$work/busybox
	make_busybox_rootfs "$root"
	tar_rootfs "$root" | import_image "$PREFIX/busybox" \
		-c "ENV PATH=$BUSYBOX_PATH" -c 'CMD ["sh"]'
	remove_tree "$root"
}

build_nopasswd() {
	local root=$work/nopasswd
	make_busybox_rootfs "$root" nopasswd
	tar_rootfs "$root" | import_image "$PREFIX/nopasswd" \
		-c "ENV PATH=$BUSYBOX_PATH" -c 'CMD ["sh"]'
	remove_tree "$root"
}

build_user1000() {
	local root=$work/user1000
	make_busybox_rootfs "$root"
	printf '%s\n' 'app:x:1000:1000:app:/home/app:/bin/sh' >>"$root/etc/passwd"
	printf '%s\n' 'audio:x:29:app' 'app:x:1000:' >>"$root/etc/group"
	install -d -m 0755 -o 1000 -g 1000 "$root/home/app"
	printf '%s\n' '# ~/.profile of the asme-test/user1000 image' 'export PS1="\u@\h:\w\$ "' \
		>"$root/home/app/.profile"
	chown 1000:1000 "$root/home/app/.profile"
	chmod 0644 "$root/home/app/.profile"
	tar_rootfs "$root" | import_image "$PREFIX/user1000" \
		-c "ENV PATH=$BUSYBOX_PATH" -c 'CMD ["sh"]' -c 'USER app'
	remove_tree "$root"
}

# ---------------------------------------------------------------- debian
# Print the first http(s)/file URI of an enabled apt "deb" source for $SUITE
# (exact suite name, so not $SUITE-security or $SUITE-updates).
find_debian_mirror() {
	local f uri
	for f in /etc/apt/sources.list.d/*.sources; do
		[ -r "$f" ] || continue
		uri=$(awk -v suite="$SUITE" '
			BEGIN { RS = ""; FS = "\n" }
			{
				delete v; key = ""
				for (i = 1; i <= NF; i++) {
					line = $i
					if (line ~ /^#/) continue
					if (line ~ /^[ \t]/) { if (key != "") v[key] = v[key] " " line; continue }
					c = index(line, ":")
					if (c == 0) continue
					key = tolower(substr(line, 1, c - 1))
					v[key] = substr(line, c + 1)
				}
				if (tolower(v["enabled"]) ~ /^[ \t]*no[ \t]*$/) next
				if ((" " v["types"] " ") !~ /[ \t]deb[ \t]/) next
				if ((" " v["suites"] " ") !~ ("[ \t]" suite "[ \t]")) next
				n = split(v["uris"], u, /[ \t]+/)
				for (j = 1; j <= n; j++)
					if (u[j] ~ /^(https?|file):/) { print u[j]; exit }
			}' "$f")
		if [ -n "$uri" ]; then
			printf '%s\n' "$uri"
			return 0
		fi
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[ -r "$f" ] || continue
		uri=$(awk -v suite="$SUITE" '
			/^[ \t]*#/ { next }
			{
				sub(/#.*/, "")
				gsub(/\[[^]]*\]/, " ")
				if ($1 == "deb" && $3 == suite && $2 ~ /^(https?|file):/) { print $2; exit }
			}' "$f")
		if [ -n "$uri" ]; then
			printf '%s\n' "$uri"
			return 0
		fi
	done
	return 1
}

# debootstrap_rootfs DIR INCLUDE: debootstrap --variant=minbase $SUITE into DIR
# with the packages INCLUDE (comma separated), without apt's downloaded state.
debootstrap_rootfs() {
	local root=$1 include=$2 mirror log
	log=$work/debootstrap-${root##*/}.log
	command -v debootstrap >/dev/null 2>&1 ||
		die "debootstrap not found; install it with: apt-get install debootstrap"
	if [ -n "${ASME_TEST_DEBIAN_MIRROR:-}" ]; then
		mirror=$ASME_TEST_DEBIAN_MIRROR
	else
		mirror=$(find_debian_mirror) ||
			die "no apt source for '$SUITE' in /etc/apt/sources.list{,.d/*}; set ASME_TEST_DEBIAN_MIRROR"
	fi

	note "debootstrap $SUITE with $include from $mirror (takes a few minutes; log: $log)"
	mkdir -p -- "$root"
	chmod 0755 "$root"
	debootstrap --variant=minbase --include="$include" \
		"$SUITE" "$root" "$mirror" >"$log" 2>&1 </dev/null &
	child_pid=$!
	if ! wait "$child_pid"; then
		child_pid=""
		tail -n 30 "$log" >&2 || true
		[ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
		die "debootstrap failed (see above)"
	fi
	child_pid=""

	# Slim down: nothing in the image needs apt's downloaded state.
	chroot "$root" apt-get clean >/dev/null 2>&1 || true
	rm -rf -- "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
		"$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/archives/partial/* \
		"$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
		"$root"/var/log/apt/* "$root"/var/log/*.log "$root"/tmp/* "$root"/var/tmp/*
	mkdir -p "$root/var/lib/apt/lists/partial"
}

# cache_rootfs DIR TAR: tar DIR into TAR (atomically: TAR is complete or absent)
# and remove DIR.
cache_rootfs() {
	local root=$1 tar=$2 partial
	if [ -n "$(mounts_below "$root")" ]; then
		die "something is still mounted below $root"
	fi
	partial=$work/${tar##*/}
	tar --numeric-owner --xattrs -C "$root" -cf "$partial" .
	sync -- "$partial" 2>/dev/null || sync
	mv -f -- "$partial" "$tar"
	remove_tree "$root"
}

make_debian_tar() {
	local root=$work/debian start=$SECONDS
	debootstrap_rootfs "$root" python3,git,ca-certificates

	# Sanity check before the result is cached.
	chroot "$root" /usr/bin/env -i PATH="$DEBIAN_PATH" python3 -c 'import ssl' ||
		die "python3 does not work in the debootstrapped rootfs"
	chroot "$root" /usr/bin/env -i PATH="$DEBIAN_PATH" git --version >/dev/null ||
		die "git does not work in the debootstrapped rootfs"

	cache_rootfs "$root" "$DEBIAN_TAR"
	note "debian rootfs built in $((SECONDS - start))s, cached at $DEBIAN_TAR"
}

build_debian() {
	if [ ! -s "$DEBIAN_TAR" ]; then
		make_debian_tar
	fi
	import_image "$PREFIX/debian" \
		-c "ENV PATH=$DEBIAN_PATH" -c 'CMD ["bash"]' <"$DEBIAN_TAR"
}

# ---------------------------------------------------------------- debian-doc
make_debian_doc_tar() {
	local root=$work/debian-doc start=$SECONDS
	debootstrap_rootfs "$root" man-db,bash-completion,zsh,fish

	# Sanity check before the result is cached: man finds a page (dpkg's own).
	chroot "$root" /usr/bin/env -i PATH="$DEBIAN_PATH" man -w dpkg >/dev/null ||
		die "man does not work in the debootstrapped rootfs"

	cache_rootfs "$root" "$DEBIAN_DOC_TAR"
	note "debian-doc rootfs built in $((SECONDS - start))s, cached at $DEBIAN_DOC_TAR"
}

build_debian-doc() {
	if [ ! -s "$DEBIAN_DOC_TAR" ]; then
		make_debian_doc_tar
	fi
	import_image "$PREFIX/debian-doc" \
		-c "ENV PATH=$DEBIAN_PATH" -c 'CMD ["bash"]' <"$DEBIAN_DOC_TAR"
}

# ---------------------------------------------------------------- postgres
readonly PG_BIN=/usr/lib/postgresql/15/bin
readonly PGDATA=/var/lib/postgresql/data

# write_postgres_entrypoint FILE: the entrypoint of asme-test/postgres. For the
# data folder it does what the official postgres image's does: root makes it
# postgres's, postgres initialises and serves it.
write_postgres_entrypoint() {
	cat >"$1" <<'EOF'
#!/bin/sh
# Entrypoint of asme-test/postgres (written by asme's tests/images/build.sh).
# `postgres [OPTION...]` (the CMD): as root, make $PGDATA postgres's and run
# again as postgres; as postgres, initdb $PGDATA if it is empty and run the
# server on a unix socket in /tmp only. Any other command is run as given.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ "${1:-}" != postgres ]; then
	exec "$@"
fi
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA"
	chown -R postgres:postgres "$PGDATA"
	chmod 700 "$PGDATA"
	exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	initdb -D "$PGDATA" --username=postgres --auth=trust --no-locale --encoding=UTF8
fi
shift
exec postgres -D "$PGDATA" -c listen_addresses= -k /tmp "$@"
EOF
	chmod 0755 "$1"
}

make_postgres_tar() {
	local root=$work/postgres start=$SECONDS
	debootstrap_rootfs "$root" postgresql

	# The package made a cluster "main"; the image's cluster is $PGDATA.
	rm -rf -- "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15 \
		"$root"/var/log/postgresql/*
	# Slim down: documentation, translations, locale sources (initdb --no-locale),
	# and LLVM with its z3, which only the JIT uses (an optional module: without
	# it postgres runs with no JIT).
	rm -rf -- "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
		"$root"/usr/share/locale/* "$root"/usr/share/i18n \
		"$root"/usr/lib/postgresql/15/lib/llvmjit* "$root"/usr/lib/postgresql/15/lib/bitcode \
		"$root"/usr/lib/x86_64-linux-gnu/libLLVM-14.so* "$root"/usr/lib/x86_64-linux-gnu/libz3.so*
	write_postgres_entrypoint "$root/usr/local/bin/docker-entrypoint.sh"

	# Sanity check before the result is cached.
	chroot "$root" /usr/bin/env -i PATH="$PG_BIN:$DEBIAN_PATH" postgres --version >/dev/null ||
		die "postgres does not work in the debootstrapped rootfs"
	chroot "$root" /usr/bin/env -i PATH="$PG_BIN:$DEBIAN_PATH" setpriv --reuid=postgres \
		--regid=postgres --init-groups -- id -un >/dev/null ||
		die "setpriv to postgres does not work in the debootstrapped rootfs"

	cache_rootfs "$root" "$POSTGRES_TAR"
	note "postgres rootfs built in $((SECONDS - start))s, cached at $POSTGRES_TAR"
}

build_postgres() {
	if [ ! -s "$POSTGRES_TAR" ]; then
		make_postgres_tar
	fi
	import_image "$PREFIX/postgres" \
		-c "ENV PATH=$PG_BIN:$DEBIAN_PATH" -c "ENV PGDATA=$PGDATA" \
		-c 'ENV PGHOST=/tmp' -c 'ENV PGUSER=postgres' \
		-c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' -c 'CMD ["postgres"]' \
		<"$POSTGRES_TAR"
}

# ---------------------------------------------------------------- main
main() {
	local arg name script stale tag want=()

	# ---------------------------------------------------------------- arguments
	for arg in "$@"; do
		case "$arg" in
		-h | --help)
			usage
			exit 0
			;;
		esac
		name=${arg#"$PREFIX"/}
		case " ${ALL_IMAGES[*]} " in
		*" $name "*) want+=("$name") ;;
		*)
			usage >&2
			die "unknown image: $arg"
			;;
		esac
	done
	if [ ${#want[@]} -eq 0 ]; then
		want=("${ALL_IMAGES[@]}")
	fi

	# ---------------------------------------------------------------- preconditions
	[ "$(id -u)" -eq 0 ] || die "must be run as root"

	script=$(readlink -f -- "${BASH_SOURCE[0]}")
	[ -f "$script" ] || die "cannot locate this script's file (${BASH_SOURCE[0]})"
	recipe=$(sha256sum -- "$script")
	recipe=${recipe%% *}

	command -v docker >/dev/null 2>&1 ||
		die "docker CLI not found; install docker and start the daemon ('dockerd &' as root, or 'systemctl start docker')"
	if ! docker info >/dev/null 2>&1; then
		echo "build.sh: docker daemon is not reachable; start it as root with 'dockerd &' (or 'systemctl start docker')" >&2
		exit 1
	fi

	CACHE=${ASME_TEST_CACHE:-/var/cache/asme-tests}
	mkdir -p -- "$CACHE"
	CACHE=$(readlink -f -- "$CACHE")
	DEBIAN_TAR=$CACHE/debian-bookworm-minbase.tar
	DEBIAN_DOC_TAR=$CACHE/debian-doc-bookworm-minbase.tar
	POSTGRES_TAR=$CACHE/postgres-bookworm-minbase.tar

	# ---------------------------------------------------------------- lock
	exec 9>>"$CACHE/build.lock"
	if ! flock -n 9; then
		note "waiting for $CACHE/build.lock (another build is running)"
		flock 9
	fi

	# ---------------------------------------------------------------- scratch space
	trap cleanup EXIT
	trap 'cleanup; exit 130' INT
	trap 'cleanup; exit 143' TERM

	# We hold the lock, so any work directory still present was left behind by
	# a run that was killed outright: remove it.
	for stale in "$CACHE"/work.*; do
		[ -e "$stale" ] || continue
		remove_tree "$stale"
	done

	# The work directory lives in the cache dir so that finished files can be
	# moved into place atomically (same filesystem).
	work=$(mktemp -d "$CACHE/work.XXXXXX")

	# ---------------------------------------------------------------- build

	for name in "${want[@]}"; do
		tag=$PREFIX/$name
		if image_is_current "$tag"; then
			echo "ok $tag"
			continue
		fi
		"build_$name"
		image_is_current "$tag" || die "$tag was imported but does not carry asme.recipe=$recipe"
		echo "built $tag"
	done
}

# Everything above only defines functions, and bash parses this whole line
# before running it, so editing this file while a build is running cannot
# make the running shell execute a mix of old and new text.
main "$@"; exit
