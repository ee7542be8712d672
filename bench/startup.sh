#!/usr/bin/env bash
# Start-up cost of asme: median wall time of `asme run --rm -v DIR:/w IMG true` against
# `docker run --rm -v DIR:/w IMG true`, interleaved so both see the same machine, printed as
# ratios. The bind mount is what the strategies work on (idmap leases it from the agent).
#
#   bench/startup.sh [-n RUNS] [STRATEGY...]     (default: 25 runs, strategies user idmap)
#
# STRATEGY `driver` is `asme run` without --rm (a container that can outlive the run, whose
# bind mounts become volumes of asme's volume driver; the container and its volume are
# removed after each sample, untimed).
#
# Run it as an ordinary user in the docker group. Goal: every ratio at most 1.10; the
# driver's at most 1.05. The driver's Mount latency alone: sudo bench/driver_mount.py.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=25
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
strategies=("$@")
[ ${#strategies[@]} -gt 0 ] || strategies=(user idmap)
image=${ASME_BENCH_IMAGE:-asme-test/busybox}

docker image inspect "$image" >/dev/null 2>&1 || {
  echo "image $image is missing: build it with 'sudo bash tests/images/build.sh busybox'" >&2
  exit 1
}
# ASME_BIN: a built asme (e.g. when the benchmarking user has no Rust toolchain).
if [ -z "${ASME_BIN:-}" ]; then cargo build --release --quiet; fi
asme=${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mount=(-v "$dir:/w")

# One warm-up each: the first asme run of an image probes it once (cached afterwards), and
# the first idmap run starts the agent.
docker run --rm "${mount[@]}" "$image" true
# run_asme STRATEGY [NAME]: one asme run of the strategy (`driver`: idmap without --rm).
run_asme() {
  if [ "$1" = driver ]; then
    "$asme" --strategy idmap run --name "$2" "${mount[@]}" "$image" true
  else
    "$asme" --strategy "$1" run --rm "${mount[@]}" "$image" true
  fi
}
for s in "${strategies[@]}"; do
  run_asme "$s" "asme-bench-warm-$$" >/dev/null
  [ "$s" != driver ] || docker rm -v "asme-bench-warm-$$" >/dev/null
done

elapsed() { # CMD... -> milliseconds
  local t0 t1
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  echo $(( (t1 - t0) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.1f", m/1000}'; }

declare -A samples
for ((i = 0; i < runs; i++)); do
  samples[docker]+="$(elapsed docker run --rm "${mount[@]}" "$image" true) "
  for s in "${strategies[@]}"; do
    samples[$s]+="$(elapsed run_asme "$s" "asme-bench-$$-$i") "
    [ "$s" != driver ] || docker rm -v "asme-bench-$$-$i" >/dev/null
  done
done

base=$(tr ' ' '\n' <<<"${samples[docker]}" | grep . | median)
printf '%-28s %8s ms  (median of %d)\n' "docker run" "$base" "$runs"
for s in "${strategies[@]}"; do
  m=$(tr ' ' '\n' <<<"${samples[$s]}" | grep . | median)
  ratio=$(awk -v a="$m" -v b="$base" 'BEGIN {printf "%.3f", a/b}')
  label="asme --strategy $s run" goal=1.10
  [ "$s" != driver ] || label="asme run (no --rm: driver)" goal=1.05
  printf '%-28s %8s ms  ratio %s  (goal <= %s)\n' "$label" "$m" "$ratio" "$goal"
done
