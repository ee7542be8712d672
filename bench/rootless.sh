#!/usr/bin/env bash
# Rootless Docker, a container user that is not root: asme's FUSE mapping served in the
# daemon's own namespaces (what auto uses there) against plain rootless `docker run`, which
# stores that user's writes as a subordinate id (or, in a 0755 folder of yours, refuses
# them; the plain workload here runs as root, which is you there, as the best plain case).
# Start-up (`true`) and a small-file workload in the bind mount (1,000 files created, read
# and deleted by one shell, where FUSE pays per operation). Medians, interleaved.
#
#   bench/rootless.sh [-n RUNS] [IMAGE]      (default: 10 runs, asme-test/busybox)
#
# Run it as the user whose rootless dockerd it measures, with DOCKER_HOST at its socket and
# the image loaded (`docker save IMAGE | DOCKER_HOST=... docker load`). ASME_BIN: a built asme.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/timing.sh
runs=10
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
image=${1:-asme-test/busybox}
docker info --format '{{.SecurityOptions}}' | grep -q rootless ||
  { echo "bench/rootless.sh: DOCKER_HOST is not a rootless dockerd" >&2; exit 1; }
docker image inspect "$image" >/dev/null 2>&1 || { echo "bench/rootless.sh: no $image there" >&2; exit 1; }
if [ -z "${ASME_BIN:-}" ]; then cargo build --release --quiet; fi
asme=${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
work='cd /w && mkdir -p s && cd s && for i in $(seq 1000); do echo $i > f$i; done && cat f* >/dev/null && rm -f f*'

docker run --rm -v "$dir:/w" "$image" true >/dev/null 2>&1 # warm
"$asme" run --rm -v "$dir:/w" --user 1000:1000 "$image" true >/dev/null 2>&1
plain="" fused="" wplain="" wfuse=""
for ((i = 0; i < runs; i++)); do
  plain+="$(timed docker run --rm -v "$dir:/w" "$image" true) "
  fused+="$(timed "$asme" run --rm -v "$dir:/w" --user 1000:1000 "$image" true) "
  wplain+="$(timed docker run --rm -v "$dir:/w" "$image" sh -c "$work") "
  wfuse+="$(timed "$asme" run --rm -v "$dir:/w" --user 1000:1000 "$image" sh -c "$work") "
done
p=$(median <<<"$plain") u=$(median <<<"$fused") wp=$(median <<<"$wplain") wf=$(median <<<"$wfuse")
echo "rootless docker, $image, median of $runs (ms)"
printf '%-44s %6s\n' "plain run (true)" "$p"
printf '%-44s %6s  ratio %s\n' "asme, uid 1000 (fuse in the daemon's ns)" "$u" "$(ratio "$u" "$p")"
printf '%-44s %6s\n' "plain, 1,000 small files (as root)" "$wp"
printf '%-44s %6s  ratio %s\n' "asme, 1,000 small files (uid 1000)" "$wf" "$(ratio "$wf" "$wp")"
echo "samples: plain $plain| asme $fused"
echo "workload samples: plain $wplain| asme $wfuse"
