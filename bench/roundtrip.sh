#!/usr/bin/env bash
# Cost of one FUSE round trip through `asme mount`, over io_uring and over /dev/fuse, in one
# run: a process stat()s one file N times through a root mount with `-o timeout=0` (so the
# kernel caches nothing and every stat is one GETATTR request), and the µs per stat are
# compared with the same loop on the host's folder.
#
#   sudo bench/roundtrip.sh [-n REPS] [--stats N] [--dir PARENT]
#        defaults:          7         20000     /var/tmp
#
# Targets, interleaved (the order rotates every repetition), medians printed with ratios:
#   native   the folder itself
#   uring    asme mount --map U/0:@G/@0 -o timeout=0 (requests over io_uring)
#   dev      the same with -o nouring (requests over /dev/fuse, fuser's loop)
# FUSE over io_uring needs the fuse module's switch (`enable_uring`, Linux 6.14+); the
# script turns it on for the run where it is off, and puts it back on exit. The mount and
# its folders are removed on exit, even on failure.
#
# asme is ASME_BIN, default target/x86_64-unknown-linux-gnu/release/asme; U:G is
# ASME_BENCH_USER (default 1234) and its group.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "bench/roundtrip.sh: $*" >&2
  exit 1
}

reps=7 stats=20000 parent=/var/tmp
while [ $# -gt 0 ]; do
  case $1 in
  -n) reps=${2:?}; shift 2 ;;
  --stats) stats=${2:?}; shift 2 ;;
  --dir) parent=${2:?}; shift 2 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (see --help)" ;;
  esac
done
for v in "$reps" "$stats"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "'$v' is not a positive whole number"
done
[ "$(id -u)" = 0 ] || die "run it as root (it mounts with a map and may turn on enable_uring)"
asme=${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}
[ -x "$asme" ] || die "no asme at $asme (cargo build --release, or set ASME_BIN)"
user=${ASME_BENCH_USER:-1234}
entry=$(getent passwd "$user") || die "no host user $user (set ASME_BENCH_USER)"
IFS=: read -r _ _ uid gid _ <<<"$entry"
switch=/sys/module/fuse/parameters/enable_uring
[ -e "$switch" ] || die "this kernel has no FUSE over io_uring ($switch is missing; Linux 6.14+)"

base=$(mktemp -d "$parent/asme-roundtrip.XXXXXX")
was=$(cat "$switch")
cleanup() {
  mountpoint -q "$base/mnt" && { "$asme" umount "$base/mnt" || umount -l "$base/mnt"; }
  rm -rf "$base"
  [ "$was" = Y ] || echo 0 >"$switch"
}
trap cleanup EXIT
[ "$was" = Y ] || echo 1 >"$switch"
mkdir -m 755 "$base/src" "$base/mnt" "$base/native"
echo x >"$base/src/f"
echo x >"$base/native/f"
chown -R "$uid:$gid" "$base/src"

# time_stats FILE: µs per stat, after a warm-up.
time_stats() {
  python3 - "$1" "$stats" <<'EOF'
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
for _ in range(n // 10):
    os.stat(path)
t = time.perf_counter()
for _ in range(n):
    os.stat(path)
print(f"{(time.perf_counter() - t) / n * 1e6:.2f}")
EOF
}
# run TARGET: one sample.
run() {
  case $1 in
  native) time_stats "$base/native/f" ;;
  uring | dev)
    local opts=timeout=0
    [ "$1" = dev ] && opts+=,nouring
    "$asme" mount --map "$uid/0:@$gid/@0" -o "$opts" "$base/src" "$base/mnt"
    time_stats "$base/mnt/f"
    "$asme" umount "$base/mnt"
    ;;
  esac
}

targets=(native uring dev)
declare -A samples
for ((r = 0; r < reps; r++)); do
  order=("${targets[@]:r%3}" "${targets[@]:0:r%3}")
  for t in "${order[@]}"; do samples[$t]+="$(run "$t") "; done
done
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "kernel      $(uname -r); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "asme        $("$asme" --version)"
echo "runs        median of $reps, interleaved; $stats stat() calls per sample, timeout=0"
echo
printf '%-8s %10s   %s\n' target "µs/stat" "samples"
for t in "${targets[@]}"; do
  printf '%-8s %10s   %s\n' "$t" "$(median "${samples[$t]}")" "${samples[$t]}"
done
u=$(median "${samples[uring]}") d=$(median "${samples[dev]}") n=$(median "${samples[native]}")
echo
awk -v u="$u" -v d="$d" -v n="$n" 'BEGIN {
  printf "round trip over /dev/fuse / over io_uring: %.2f\n", d / u
  printf "one round trip, less a native stat: io_uring %.1f µs, /dev/fuse %.1f µs\n", u - n, d - n
}'
