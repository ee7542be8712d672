#!/usr/bin/env bash
# Rootless Podman's own answer for a non-root container user, as asme uses it
# (`--userns=keep-id:uid=N,gid=N`), against a plain rootless `podman run`: the first start
# with a mapping (Podman prepares the image's layers for that mapping once) and later starts.
#
#   bench/podman.sh [-n RUNS] [IMAGE]      (default: 10 runs, localhost/asme-test/debian)
#
# Run it as the ordinary user whose rootless Podman it measures, with the image loaded
# (`docker save IMAGE | podman load`). Each first start uses a mapping not used before
# (uid 2000 + run), so Podman has prepared nothing for it.
set -euo pipefail
runs=10
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
image=${1:-localhost/asme-test/debian}
podman image exists "$image" || { echo "bench/podman.sh: no $image in this user's podman" >&2; exit 1; }

ms() { echo $(( $(date +%s%N) / 1000000 )); }
timed() { local t0; t0=$(ms); "$@" >/dev/null 2>&1; echo $(( $(ms) - t0 )); }
run() { podman run --rm --network none "$@" "$image" true; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%d", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

run >/dev/null 2>&1 # warm: the image's own layers
base=$((2000 + $$ % 1000 * 20))
plain="" first="" later=""
for ((i = 0; i < runs; i++)); do
  uid=$((base + i))
  plain+="$(timed run) "
  first+="$(timed run --userns=keep-id:uid=$uid,gid=$uid) "
  later+="$(timed run --userns=keep-id:uid=$uid,gid=$uid) "
done
p=$(median <<<"$plain") f=$(median <<<"$first") l=$(median <<<"$later")
echo "rootless podman, $image, $(podman info --format '{{.Store.GraphDriverName}}') storage, median of $runs (ms)"
printf '%-40s %6s\n' "plain run" "$p"
printf '%-40s %6s  ratio %s\n' "keep-id, first start with a mapping" "$f" "$(awk -v a="$f" -v b="$p" 'BEGIN {printf "%.2f", a/b}')"
printf '%-40s %6s  ratio %s\n' "keep-id, later starts" "$l" "$(awk -v a="$l" -v b="$p" 'BEGIN {printf "%.2f", a/b}')"
echo "samples: plain $plain| first $first| later $later"
