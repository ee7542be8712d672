#!/usr/bin/env bash
# POSIX conformance of `asme mount` (the uid/gid-mapping FUSE filesystem), measured with
# pjdfstest on the same ext4 folder natively, through bindfs and through asme:
#
#   native  a fresh folder on PARENT's filesystem, no FUSE            (source owned by root)
#   bindfs  bindfs --map=1234/0:@1234/@0 SRC MNT                       (SRC owned by 1234:1234)
#   asme    ASME_BIN mount [--map SPEC] [-o OPTS] SRC MNT, then `asme umount MNT`
#           (SRC owned by root, or by the uid/gid that SPEC maps to 0/@0)
#
#   sudo bench/pjdfstest.sh [--dir PARENT] [--logs DIR] [--map SPEC] [-o OPTS] [--timeout SECS]
#                           [TARGET...]
#   defaults: PARENT and DIR /var/tmp, asme's default map, no OPTS, 3600, native bindfs asme
#   asme with bindfs's mapping: sudo bench/pjdfstest.sh --map 1234/0:@1234/@0 asme
#
# Each target runs `prove -rv TESTS` as root with its cwd at the top of a fresh folder (the
# mount point for FUSE targets), one target after the other, and prints one line of the
# table: individual TAP tests that passed ("ok N", skips and unexpected TODO passes
# included), failed ("not ok N"), expected failures ("not ok N # TODO", which pjdfstest
# marks for Linux and prove does not count as failures), tests planned but never run (a
# test file that died midway) and the .t files prove reports as failing; the failing files
# and test numbers are listed below the table. The full verbose output, with every failing
# command as "tried '...', expected X, got Y", and a per-file summary at its end are kept in
# LOGS/asme-pjdfstest-TARGET.log; column "prove" is prove's verdict (ok, fail, or TIMEOUT
# for a target stopped after --timeout seconds). Each target takes about 4 minutes here.
#
# Figures on the Debian 12 VM this was written on (kernel 6.18, ext4, bindfs 1.14.7,
# pjdfstest 85a8aea, 8827 tests): native 8799 passed / 0 failed / 28 todo; bindfs 8763 / 55
# / 9 (link/00.t, link/03.t, rename/00.t: stale nlink and attributes of hard links;
# utimensat/02.t: UTIME_OMIT ignored). Through FUSE, chown(-1, -1) leaves ctime alone, so
# 19 of the chown/00.t TODO tests pass there.
#
# Filesystem type: pjdfstest's tests/conf sets fs from `df -PT .` (uppercased) and the
# tests change behaviour on it (on Linux only `supported rename_ctime`, true for EXT4 only);
# a FUSE mount reads as FUSE (or FUSE.NAME) and would skip the rename ctime checks
# (rename/22.t, 30 tests, which then counts as 1 passed: bindfs 8734 / 55 / 9). So
# that all three targets run the same Linux/ext4 variant, the cached copy of tests/conf
# gets one line after its detection, `[ -z "${PJDFSTEST_FS:-}" ] || fs=$PJDFSTEST_FS`, and
# this script exports PJDFSTEST_FS=EXT4 (set PJDFSTEST_FS to another value to override;
# the type df reports is still shown in the table, column "df").
#
# pjdfstest (https://github.com/pjd/pjdfstest) is never copied into this repository: it is
# built in PJDFSTEST_DIR (default /var/cache/asme-tests/pjdfstest) from PJDFSTEST_SRC, a
# git directory (its HEAD is exported with git archive) or a checked-out tree, by default
# the first git directory under /work/.mirror/pjd+pjdfstest*. It is rebuilt when the source
# changes (autoreconf -ifs, ./configure, make pjdfstest); missing build tools (autoconf,
# automake, gcc, make, perl for prove, openssl for the tests' name generator) are
# installed with apt-get.
#
# Runs as root (pjdfstest requires it; bindfs and asme mount as root, so allow_other is
# implied). ASME_BIN defaults to target/x86_64-unknown-linux-gnu/release/asme (`cargo
# build --release`). Mounts and folders are removed on exit, also on failure or Ctrl-C; a
# FUSE mount that does not unmount has its connection aborted first.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench/pjdfstest.sh: $*" >&2
  exit 1
}

parent=/var/tmp logs=/var/tmp map='' opts='' limit=3600 targets=()
while [ $# -gt 0 ]; do
  case $1 in
  --dir) parent=${2:?}; shift 2 ;;
  --logs) logs=${2:?}; shift 2 ;;
  --map) map=${2:?}; shift 2 ;;
  -o) opts=${2:?}; shift 2 ;;
  --timeout) limit=${2:?}; shift 2 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  native | bindfs | asme) targets+=("$1"); shift ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(native bindfs asme)
[[ $limit =~ ^[1-9][0-9]*$ ]] || die "--timeout '$limit' is not a positive whole number"
[ -d "$parent" ] || die "$parent is not a folder"
[ -d "$logs" ] || die "$logs is not a folder"
parent=$(realpath "$parent") logs=$(realpath "$logs")
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

[ "$(id -u)" = 0 ] || die "run it as root (pjdfstest requires it)"
asme=${ASME_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/asme}
if want bindfs || want asme; then
  [ -c /dev/fuse ] || die "no /dev/fuse (modprobe fuse)"
fi
if want bindfs; then
  command -v bindfs >/dev/null || die "bindfs is not installed (apt-get install bindfs)"
fi
if want asme; then
  [ -x "$asme" ] || die "no asme binary at $asme: run 'cargo build --release' (or set ASME_BIN)"
  "$asme" mount --help >/dev/null 2>&1 || die "$asme has no working 'mount' command ('$asme mount --help' fails)"
fi

# Owner of the asme source folder: the user that --map shows as root (U/0 or U/root) and
# the group it shows as root's (@G/@0 or @G/@root), names or numbers; else root.
src_owner=0:0
if [ -n "$map" ]; then
  u=0 g=0
  IFS=: read -ra entries <<<"$map"
  for e in "${entries[@]}"; do
    if [[ $e =~ ^([^@/]+)/(0|root)$ ]]; then
      u=$(id -u "${BASH_REMATCH[1]}" 2>/dev/null) || die "--map: no user '${BASH_REMATCH[1]}'"
    elif [[ $e =~ ^@([^@/]+)/@(0|root)$ ]]; then
      g=$(getent group "${BASH_REMATCH[1]}" | cut -d: -f3) || true
      [ -n "$g" ] || die "--map: no group '${BASH_REMATCH[1]}'"
    fi
  done
  src_owner=$u:$g
fi

# --- pjdfstest: source, tools, build ---------------------------------------------------

src=${PJDFSTEST_SRC:-}
if [ -z "$src" ]; then
  for d in /work/.mirror/pjd+pjdfstest*; do
    for c in "$d" "$d"/*; do
      if [ -d "$c" ] && git --git-dir="$c" rev-parse -q --verify 'HEAD^{commit}' >/dev/null 2>&1; then
        src=$c
        break 2
      fi
    done
  done
  [ -n "$src" ] || die "no pjdfstest source: set PJDFSTEST_SRC to a git directory or tree of github.com/pjd/pjdfstest"
fi
[ -d "$src" ] || die "PJDFSTEST_SRC=$src is not a folder"
src=$(realpath "$src")
if [ -f "$src/pjdfstest.c" ] && [ -f "$src/tests/conf" ]; then
  kind=tree
  id=tree:$src:$(find "$src" -path "$src/.git" -prune -o -type f -printf '%P %s %T@\n' | sort | sha256sum | cut -c1-16)
elif commit=$(git --git-dir="$src" rev-parse -q --verify 'HEAD^{commit}' 2>/dev/null); then
  kind=git
  id=git:$commit
else
  die "PJDFSTEST_SRC=$src is neither a git directory nor a pjdfstest tree (no pjdfstest.c, tests/conf)"
fi

cache=$(realpath -m "${PJDFSTEST_DIR:-/var/cache/asme-tests/pjdfstest}")
case "$cache/" in
"$PWD"/*) die "PJDFSTEST_DIR=$cache is inside the repository: pjdfstest must stay outside it" ;;
esac
mkdir -p "$cache" || die "cannot create $cache (PJDFSTEST_DIR)"
tree=$cache/tree

tools=(autoreconf:autoconf automake:automake cc:gcc make:make prove:perl openssl:openssl)
[ $kind = git ] && tools+=(git:git)
missing=()
for t in "${tools[@]}"; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; }
  apt_install || { apt-get update -q >/dev/null 2>&1 && apt_install; } ||
    die "cannot install ${missing[*]} with apt-get"
fi

exec 9>"$cache/.lock"
flock 9
if [ ! -x "$tree/pjdfstest" ] || [ "$(cat "$tree/.asme-source" 2>/dev/null)" != "$id" ]; then
  echo "building pjdfstest from $src in $tree" >&2
  rm -rf "$tree.new"
  mkdir -p "$tree.new"
  if [ $kind = git ]; then
    git --git-dir="$src" archive HEAD | tar -x -C "$tree.new" || die "git archive of $src failed"
  else
    tar -C "$src" --exclude=./.git -cf - . | tar -x -C "$tree.new" || die "cannot copy $src"
  fi
  # The fs override, after the detection and before the "cannot figure out" check.
  # shellcheck disable=SC2016 # the line is for sh, expanded when tests/conf is sourced
  line='[ -z "${PJDFSTEST_FS:-}" ] || fs=$PJDFSTEST_FS  # added by asme bench/pjdfstest.sh'
  sed -i "/^# If we cannot figure out file system type/i $line\\n" "$tree.new/tests/conf"
  grep -q 'fs=.PJDFSTEST_FS' "$tree.new/tests/conf" ||
    die "cannot add the PJDFSTEST_FS override to tests/conf (its layout changed?)"
  (cd "$tree.new" && autoreconf -ifs && ./configure && make pjdfstest) >"$cache/build.log" 2>&1 ||
    die "building pjdfstest failed, see $cache/build.log"
  echo "$id" >"$tree.new/.asme-source"
  rm -rf "$tree"
  mv "$tree.new" "$tree"
fi
flock -u 9
export PJDFSTEST_FS=${PJDFSTEST_FS:-EXT4}

# --- mounts and cleanup -------------------------------------------------------------------

works=()   # one folder per target: src/ (the data) and mnt/ (the mount point)
prove_pid= # the running `timeout prove`, stopped (with its process group) by cleanup

mount_dev() { # the st_dev (major:minor) of the mount at $1, from mountinfo: no syscall on it
  awk -v m="$1" '$5 == m { d = $3 } END { if (d) print d; else exit 1 }' /proc/self/mountinfo
}
is_mounted() { mount_dev "$1" >/dev/null; }

unmount() { # unmount the FUSE mount at $1, using asme's umount when $2 = asme
  local mnt=$1 how=${2:-} dev
  is_mounted "$mnt" || return 0
  if [ "$how" = asme ]; then
    timeout 20 "$asme" umount "$mnt" >/dev/null 2>&1 || true
  fi
  is_mounted "$mnt" || return 0
  timeout 20 umount "$mnt" 2>/dev/null || true
  is_mounted "$mnt" || return 0
  if dev=$(mount_dev "$mnt") && [ -w "/sys/fs/fuse/connections/${dev#*:}/abort" ]; then
    echo 1 >"/sys/fs/fuse/connections/${dev#*:}/abort" || true
  fi
  umount -l "$mnt" 2>/dev/null || true
  ! is_mounted "$mnt"
}

cleanup() {
  local w how
  if [ -n "$prove_pid" ]; then
    kill -TERM "$prove_pid" 2>/dev/null || true
    wait "$prove_pid" 2>/dev/null || true
  fi
  for w in ${works[@]+"${works[@]}"}; do
    how=${w##*/asme-pjdfstest-} how=${how%%.*} # the target, from the folder's name
    if [ -d "$w/mnt" ] && ! unmount "$w/mnt" "$how"; then
      echo "bench/pjdfstest.sh: $w/mnt is still mounted, $w left in place" >&2
      continue
    fi
    rm -rf "$w"
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- one target ---------------------------------------------------------------------------

# Sets row[TARGET] to "passed failed todo unrun files df status" from the log and appends the
# per-file summary of failures to the log. Verbose prove prints each file as "PATH.t .."
# followed by its TAP, then the "Test Summary Report" naming every failing file.
summarize() {
  local target=$1 log=$2 df=$3 status=$4 out
  out=$(awk -v tests="$tree/tests/" -v df="$df" -v status="$status" '
    function rel(p) { return index(p, tests) == 1 ? substr(p, length(tests) + 1) : p }
    function close_file() {
      if (f != "" && plan > ran) unrun += plan - ran
      f = ""; plan = 0; ran = 0
    }
    /^Test Summary Report/ { close_file(); report = 1; next }
    report && /^[^ ].*\.t \(Wstat/ { bad[rel($1)] = 1; next }
    !report && /^\/.*\.t \.\./ { close_file(); f = rel($1); next }
    !report && f != "" && /^1\.\.[0-9]+/ { plan = substr($1, 4) + 0; next }
    !report && f != "" && /^ok [0-9]+/ { pass++; ran++; next }
    !report && f != "" && /^not ok [0-9]+ # TODO/ { todo++; ran++; next }
    !report && f != "" && /^not ok [0-9]+/ { fail++; ran++; nums[f] = nums[f] " " $3; bad[f] = 1; next }
    END {
      close_file()
      nf = 0
      for (n in bad) nf++
      printf "%d %d %d %d %d %s %s\n\n", pass, fail, todo, unrun, nf, df, status
      print "== summary: " pass + 0 " passed, " fail + 0 " failed, " todo + 0 " expected failures (TODO), " \
        unrun + 0 " planned but not run, " nf " failing files"
      for (n in bad) print "== failing " n ":" (n in nums ? nums[n] : " (no failing test; see prove summary)")
    }' "$log")
  row[$target]=${out%%$'\n'*}
  printf '%s\n' "${out#*$'\n'}" >>"$log"
}

# Sorted "file: numbers" lines of the failing files in a log written by summarize.
failures() { sed -n 's/^== failing //p' "$1" | sort; }

run() {
  local target=$1 log=$logs/asme-pjdfstest-$1.log w cwd df status rc
  w=$(mktemp -d "$parent/asme-pjdfstest-$target.XXXXXX")
  works+=("$w")
  chmod 0755 "$w"
  mkdir -m 0755 "$w/src" "$w/mnt"
  case $target in
  native)
    cwd=$w/src
    ;;
  bindfs)
    chown 1234:1234 "$w/src"
    bindfs --map=1234/0:@1234/@0 "$w/src" "$w/mnt" || die "bindfs could not mount $w/src on $w/mnt"
    cwd=$w/mnt
    ;;
  asme)
    chown "$src_owner" "$w/src"
    local args=(mount)
    [ -n "$map" ] && args+=(--map "$map")
    [ -n "$opts" ] && args+=(-o "$opts")
    "$asme" "${args[@]}" "$w/src" "$w/mnt" || die "'asme ${args[*]} $w/src $w/mnt' failed"
    is_mounted "$w/mnt" || die "'asme ${args[*]}' returned but $w/mnt is not mounted"
    cwd=$w/mnt
    ;;
  esac
  df=$(cd "$cwd" && df -PT . | awk 'END { print $2 }')
  echo "$target: prove -rv $tree/tests in $cwd (df: $df, PJDFSTEST_FS=$PJDFSTEST_FS), log $log" >&2
  rc=0
  # In the background so that Ctrl-C reaches the trap at once (timeout runs prove in a
  # process group of its own, which the terminal's signals miss; cleanup stops it).
  (cd "$cwd" && exec timeout "$limit" prove -rv "$tree/tests") >"$log" 2>&1 </dev/null &
  prove_pid=$!
  wait "$prove_pid" || rc=$?
  prove_pid=
  case $rc in
  0) status=ok ;;
  124) status=TIMEOUT ;;
  *) status=fail ;;
  esac
  if [ "$target" != native ]; then
    unmount "$w/mnt" "$target" || die "$w/mnt of $target does not unmount"
  fi
  rm -rf "$w"
  summarize "$target" "$log" "$df" "$status"
}

declare -A row
for t in "${targets[@]}"; do
  run "$t"
done
trap - EXIT
cleanup

echo
printf '%-8s %8s %8s %6s %6s %6s  %-12s %-8s %s\n' target passed failed todo unrun files df prove log
for t in "${targets[@]}"; do
  read -r pass fail todo unrun nf df status <<<"${row[$t]}"
  printf '%-8s %8d %8d %6d %6d %6d  %-12s %-8s %s\n' "$t" "$pass" "$fail" "$todo" "$unrun" "$nf" "$df" "$status" \
    "$logs/asme-pjdfstest-$t.log"
done
for t in "${targets[@]}"; do
  if grep -q '^== failing ' "$logs/asme-pjdfstest-$t.log"; then
    printf '\n%s failing files and tests:\n' "$t"
    failures "$logs/asme-pjdfstest-$t.log" | sed 's/^/  /'
  fi
done
