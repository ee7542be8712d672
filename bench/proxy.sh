#!/usr/bin/env bash
# Cost of `asme proxy` (issue 13): the same docker commands through the proxy's socket and
# directly at the engine, interleaved so both see the same machine, printed as ratios.
#
#   bench/proxy.sh [-n RUNS] [-s STREAM_RUNS]     (default: 25 runs, 3 stream runs)
#
# - start-up: median wall time of `docker run --rm IMG true` (goal: at most 1.05 of direct),
#   and of `docker run --rm -v DIR:/w IMG true`, whose folder the proxy turns into a volume of
#   asme's driver (the driver's own cost: bench/startup.sh driver);
# - streams through a hijacked attach, as MiB/s (goal: at least 0.9 of direct): 1 GiB into the
#   container's stdin (`head -c 1G /dev/zero | docker run --rm -i IMG sh -c 'cat > /dev/null'`),
#   and 256 MiB out of its stdout in multiplexed frames (`--log-driver none`: the engine's own
#   stdout path, logging aside, runs at about 60 MiB/s here against about 300 for stdin).
#
# Run it as an ordinary user in the docker group. It starts its own proxy (ASME_BIN, or the
# release build) on a socket in a temporary folder, and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=25 stream_runs=3
while [ $# -gt 0 ]; do
  case $1 in
    -n) runs=$2; shift 2 ;;
    -s) stream_runs=$2; shift 2 ;;
    *) echo "usage: bench/proxy.sh [-n RUNS] [-s STREAM_RUNS]" >&2; exit 2 ;;
  esac
done
image=${ASME_BENCH_IMAGE:-asme-test/busybox}

docker image inspect "$image" >/dev/null 2>&1 || {
  echo "image $image is missing: build it with 'sudo bash tests/images/build.sh busybox'" >&2
  exit 1
}
# ASME_BIN: a built asme (e.g. when the benchmarking user has no Rust toolchain).
if [ -z "${ASME_BIN:-}" ]; then cargo build --release --quiet; fi
asme=${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}

dir=$(mktemp -d)
mkdir "$dir/w"
socket=$dir/proxy.sock
proxy_pid=
stop_proxy() {
  if [ -n "$proxy_pid" ]; then
    kill -TERM "$proxy_pid" 2>/dev/null || true
    wait "$proxy_pid" 2>/dev/null || true
    proxy_pid=
  fi
}
trap 'stop_proxy; rm -rf "$dir"' EXIT

# The proxy says `listening on PATH` once it accepts connections.
exec 3< <(exec "$asme" proxy --socket "$socket")
proxy_pid=$!
read -r -t 30 line <&3 || { echo "asme proxy did not start" >&2; exit 1; }
[ "$line" = "listening on $socket" ] || { echo "asme proxy said: $line" >&2; exit 1; }

direct() { env -u DOCKER_HOST docker "$@"; }
proxied() { DOCKER_HOST=unix://$socket docker "$@"; }

# One warm-up each (image layers in the page cache, the driver's first mount).
for via in direct proxied; do
  $via run --rm "$image" true
  $via run --rm -v "$dir/w:/w" "$image" true
done

elapsed() { # CMD... -> microseconds
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

declare -A samples
for ((i = 0; i < runs; i++)); do
  for via in direct proxied; do
    samples[$via]+="$(elapsed $via run --rm "$image" true) "
    samples[$via-v]+="$(elapsed $via run --rm -v "$dir/w:/w" "$image" true) "
  done
done
med() { tr ' ' '\n' <<<"${samples[$1]}" | grep . | median; }
d=$(med direct) p=$(med proxied) dv=$(med direct-v) pv=$(med proxied-v)
printf '%-40s %9s ms  (median of %d)\n' "docker run --rm IMG true" "$d" "$runs"
printf '%-40s %9s ms  ratio %s  (goal <= 1.05)\n' "  through the proxy" "$p" "$(ratio "$p" "$d")"
printf '%-40s %9s ms\n' "docker run --rm -v DIR:/w IMG true" "$dv"
printf '%-40s %9s ms  ratio %s  (a volume of the driver)\n' "  through the proxy" "$pv" "$(ratio "$pv" "$dv")"

# Through the attach stream, interleaved; the median of STREAM_RUNS, in MiB/s.
stream_in() { head -c 1G /dev/zero | $1 run --rm -i "$image" sh -c 'cat > /dev/null'; }
stream_out() {
  $1 run --rm --log-driver none "$image" head -c 268435456 /dev/zero | cat > /dev/null
}
mibs() { awk -v mib="$1" -v ms="$2" 'BEGIN {printf "%.0f", mib * 1000 / ms}'; }
for dirn in in out; do
  for ((i = 0; i < stream_runs; i++)); do
    for via in direct proxied; do
      samples[$dirn-$via]+="$(elapsed stream_$dirn $via) "
    done
  done
  label="1 GiB into stdin (attach)" mib=1024
  [ $dirn = in ] || label="256 MiB out of stdout (attach)" mib=256
  td=$(mibs $mib "$(med "$dirn-direct")") tp=$(mibs $mib "$(med "$dirn-proxied")")
  printf '%-40s %9s MiB/s  (median of %d)\n' "$label" "$td" "$stream_runs"
  printf '%-40s %9s MiB/s  ratio %s  (goal >= 0.9)\n' "  through the proxy" "$tp" "$(ratio "$tp" "$td")"
done
