#!/usr/bin/env bash
# Speed of `asme fix` on a large root-owned tree, against the usual ways of doing it by hand:
#
#   root    asme fix --owner UID:GID TREE      asme's parallel walker, in this process, as root
#   chown   chown -R UID:GID TREE
#   find    find TREE -exec chown -h UID:GID {} +
#   user    asme fix TREE                      run by the ordinary user: the same walker as root
#                                              in a throwaway container (the engine path)
#
#   sudo bench/fix.sh [-n REPS] [--entries N] [--fresh]
#        defaults:       3          200000
#   quick check: sudo bench/fix.sh -n 1 --entries 20000
#
# The tree holds N entries below its top folder (folders of up to 999 empty files plus the
# folders themselves; 200000 = 200 x 999 files + 200 folders). Creating it takes a while,
# so it is built once and kept at /var/tmp/asme-fixbench/u<UID>/tree-N (--fresh rebuilds
# it; `sudo rm -rf /var/tmp/asme-fixbench` removes it). The folder holding it belongs to the
# user, as asme requires of a tree an ordinary user fixes.
#
# The four methods are interleaved over REPS repetitions (the order rotates each time).
# Before every timed run, untimed: `chown -R 0:0 TREE` and `sync`, so each starts from an
# all-root tree with nothing left to write back. After every run the whole tree must belong
# to UID:GID, and asme's summary must count every entry as changed, or the benchmark fails.
# Times are wall clock (process start to exit), medians in seconds. Goals: chown -R / asme
# (the walker's speed-up) at least 1.5; user end-to-end minus root walker at most 0.3 s.
# The user figure includes the container's start and teardown; with docker's overlay2 on the
# tree's filesystem, the teardown (overlay unmount) syncs that filesystem, so it also pays
# for writing back the chowned inodes, which the in-process runs leave to the background.
#
# Runs as root; the user is ASME_BENCH_USER (default 1234, a docker group member); asme is
# ASME_BIN, else target/x86_64-unknown-linux-gnu/release/asme after `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench/fix.sh: $*" >&2
  exit 1
}

reps=3 entries=200000 fresh=0
while [ $# -gt 0 ]; do
  case $1 in
  -n) reps=${2:?}; shift 2 ;;
  --entries) entries=${2:?}; shift 2 ;;
  --fresh) fresh=1; shift ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in "$reps" "$entries"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "'$v' is not a positive whole number"
done
((entries >= 2)) || die "--entries must be at least 2 (one folder and one file)"

[ "$(id -u)" = 0 ] || die "run it as root (it resets the tree to root and runs asme as user ${ASME_BENCH_USER:-1234})"
docker info >/dev/null 2>&1 || die "the Docker engine is unreachable ('docker info' fails)"
user=${ASME_BENCH_USER:-1234}
entry=$(getent passwd "$user") || die "no host user $user (set ASME_BENCH_USER)"
IFS=: read -r uname _ uid gid _ home _ <<<"$entry"
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "python3 is needed to build the tree"
command -v setpriv >/dev/null || die "setpriv (util-linux) is needed to run asme as user $user"

if [ -z "${ASME_BIN:-}" ]; then
  command -v cargo >/dev/null || die "no cargo here: build asme elsewhere and set ASME_BIN"
  cargo build --release --quiet
fi
asme=$(realpath "${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}") ||
  die "no asme binary at ${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}"
[ -x "$asme" ] || die "$asme is not executable"

as_user() { setpriv --reuid="$uid" --regid="$gid" --init-groups env HOME="$home" PATH="$PATH" "$@"; }
as_user "$asme" --version >/dev/null 2>&1 || die "user $user cannot run $asme (a folder on the way is closed?)"
as_user docker info >/dev/null 2>&1 || die "user $user cannot reach the Docker engine (not in the docker group?)"

base=/var/tmp/asme-fixbench
own=$base/u$uid
tree=$own/tree-$entries
total=$((entries + 1)) # the top folder is an entry too

# What this run leaves behind: its scratch folder and a tree it did not finish building.
work='' partial=''
cleanup() {
  if [ -n "$work" ]; then rm -rf "$work"; fi
  if [ -n "$partial" ]; then rm -rf "$partial"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
work=$(mktemp -d /tmp/asme-fixbench.XXXXXX)

# The cache: base belongs to root; the user's folder inside it holds the trees.
for d in "$base" "$own"; do
  if [ -L "$d" ] || { [ -e "$d" ] && [ ! -d "$d" ]; }; then die "$d is not a folder"; fi
done
mkdir -p "$base"
chown 0:0 "$base"
chmod 755 "$base"
mkdir -p "$own"
chown "$uid:$gid" "$own"
chmod 755 "$own"

count() { find "$1" | wc -l; }
if ((fresh)) && [ -e "$tree" ]; then
  echo "removing the cached tree $tree (--fresh)" >&2
  rm -rf "$tree"
fi
if [ -e "$tree" ] && [ ! -L "$tree" ] && [ -d "$tree" ] && [ "$(count "$tree")" = "$total" ]; then
  built="cached"
else
  if [ -e "$tree" ] || [ -L "$tree" ]; then
    echo "the cached tree $tree is not as expected: rebuilding it" >&2
    rm -rf "$tree"
  fi
  echo "building $tree ($entries entries; kept for later runs)" >&2
  t0=$SECONDS
  partial=$base/.building-$entries.$$
  "$python" - "$partial" "$entries" <<'EOF'
import math, os, sys

top, entries = sys.argv[1], int(sys.argv[2])
folders = max(1, math.ceil(entries / 1000))
files = entries - folders
os.mkdir(top, 0o755)
flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC
for d in range(folders):
    folder = f"{top}/d{d:04}"
    os.mkdir(folder, 0o755)
    for f in range(files // folders + (d < files % folders)):
        os.close(os.open(f"{folder}/f{f:04}", flags, 0o644))
EOF
  chown -R 0:0 "$partial"
  sync
  [ "$(count "$partial")" = "$total" ] || die "the tree built at $partial does not hold $total entries"
  mv -T "$partial" "$tree"
  partial=
  built="built in $((SECONDS - t0)) s"
fi
folders=$(find "$tree" -mindepth 1 -maxdepth 1 -type d | wc -l)

reset_tree() {
  chown -R 0:0 "$tree"
  sync
}
# check_owned LABEL: every entry must now belong to the user.
check_owned() {
  local stray
  stray=$(find "$tree" \( ! -uid "$uid" -o ! -gid "$gid" \) -print -quit)
  [ -z "$stray" ] || die "after '$1' not everything belongs to $uid:$gid: $(stat -c '%u:%g %n' "$stray")"
}
# check_summary LABEL FILE VERB: asme's one-line summary must count every entry as changed.
summary_re='^asme fix: ([0-9]+) entries: ([0-9]+) (changed|would change), ([0-9]+) already fine, ([0-9]+) skipped in ([0-9.]+) s$'
check_summary() {
  local line
  line=$(cat "$2")
  if ! [[ $line =~ $summary_re ]] || [ "${BASH_REMATCH[3]}" != "$3" ] ||
    [ "${BASH_REMATCH[1]}" != "$total" ] || [ "${BASH_REMATCH[2]}" != "$total" ] ||
    [ "${BASH_REMATCH[4]}" != 0 ] || [ "${BASH_REMATCH[5]}" != 0 ]; then
    die "'$1' printed an unexpected summary (expected $total entries, all $3): '$line'"
  fi
}

run_method() {
  case $1 in
  root) "$asme" fix --owner "$uid:$gid" "$tree" ;;
  chown) chown -R "$uid:$gid" "$tree" ;;
  find) find "$tree" -exec chown -h "$uid:$gid" '{}' + ;;
  user) as_user "$asme" fix "$tree" ;;
  esac
}
declare -A label=(
  [root]="asme fix --owner $uid:$gid (root, walker in-process)"
  [chown]="chown -R $uid:$gid"
  [find]="find -exec chown -h $uid:$gid {} +"
  [user]="asme fix as $uname (end-to-end via engine)"
)

# Untimed warm-up through the engine: imports asme's own image on first use and checks the
# path works (a dry run changes nothing).
reset_tree
as_user "$asme" fix --dry-run "$tree" >"$work/out" 2>"$work/err" || {
  cat "$work/err" >&2
  die "'asme fix --dry-run $tree' as user $user failed"
}
check_summary "asme fix --dry-run (as $uname)" "$work/out" "would change"

declare -A samples own_times
methods=(root chown find user)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$SECONDS
for ((i = 0; i < reps; i++)); do
  order=("${methods[@]:i%4}" "${methods[@]:0:i%4}")
  for m in "${order[@]}"; do
    echo "repetition $((i + 1))/$reps: $m" >&2
    reset_tree
    t0=$(date +%s%N)
    if ! run_method "$m" >"$work/out" 2>"$work/err"; then
      cat "$work/err" >&2
      die "'${label[$m]}' failed"
    fi
    t1=$(date +%s%N)
    samples[$m]+="$(((t1 - t0) / 1000000)) "
    if [ -s "$work/err" ]; then
      cat "$work/err" >&2
      die "'${label[$m]}' printed errors or warnings"
    fi
    case $m in
    root | user)
      check_summary "${label[$m]}" "$work/out" changed
      own_times[$m]+="${BASH_REMATCH[6]} "
      ;;
    esac
    check_owned "${label[$m]}"
  done
done
elapsed=$((SECONDS - start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

median() { # milliseconds on a line -> seconds, 3 decimals
  tr ' ' '\n' | grep . | sort -n |
    awk '{a[NR]=$1} END {printf "%.3f", ((NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) / 1000}'
}
declare -A med
for m in "${methods[@]}"; do med[$m]=$(median <<<"${samples[$m]}"); done
seconds() { tr ' ' '\n' | grep . | awk '{printf "%s%.3f", (NR>1 ? " " : ""), $1/1000}'; }

fstype=$(df --output=fstype "$tree" | tail -n 1 | tr -d ' ')
device=$(df --output=source "$tree" | tail -n 1 | tr -d ' ')
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "machine     nproc $(nproc), ${cpu:-unknown cpu}, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
echo "kernel      $(uname -r)"
echo "load avg    $load_start at start, $load_end at end of the timed runs"
echo "filesystem  $fstype ($device), tree $tree"
echo "docker      $(docker version --format '{{.Server.Version}}')"
echo "asme        $("$asme" --version) ($asme)"
echo "tree        $total entries: top + $folders folders + $((entries - folders)) empty files, all root-owned before each run ($built)"
echo "runs        median of $reps, interleaved; wall clock; chown -R 0:0 + sync before each (untimed)"
echo
printf '%-54s %9s   %s\n' method "median s" "samples s (run order)"
for m in "${methods[@]}"; do
  printf '%-54s %9s   %s\n' "${label[$m]}" "${med[$m]}" "$(seconds <<<"${samples[$m]}")"
done
echo
for m in root user; do
  printf '%-54s %s\n' "asme's own 'in X s' (${m})" "${own_times[$m]% }"
done
echo

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a/b : 0}'; }
verdict() { if awk "BEGIN {exit !($1)}"; then echo ok; else echo MISSED; fi; }
r_chown=$(ratio "${med[chown]}" "${med[root]}")
r_find=$(ratio "${med[find]}" "${med[root]}")
diff=$(awk -v a="${med[user]}" -v b="${med[root]}" 'BEGIN {printf "%.3f", a-b}')
printf '%-54s %9s   goal >= 1.5  %s\n' "chown -R / asme walker (speed-up)" "$r_chown" "$(verdict "$r_chown >= 1.5")"
printf '%-54s %9s\n' "find -exec chown / asme walker" "$r_find"
printf '%-54s %9s   goal <= 0.3  %s\n' "user end-to-end - root walker (s)" "$diff" "$(verdict "$diff <= 0.3")"
echo
echo "took ${elapsed} s of timed repetitions; the tree stays cached (remove: sudo rm -rf $base)"
