#!/usr/bin/env bash
# Rootless Podman, a container user that is not root: Podman's own answer
# (`--userns=keep-id:uid=N,gid=N`, what asme's auto uses) and asme's FUSE mapping served in
# Podman's namespaces (`asme --engine podman --strategy fuse`), against a plain rootless
# `podman run`: the first start with a mapping (Podman prepares the image's layers for that
# mapping once per image and uid), later starts, and a small-file workload in the bind mount
# (1,000 files created, read and deleted by one shell, where FUSE pays per operation).
#
#   bench/podman.sh [-n RUNS] [IMAGE]      (default: 10 runs, localhost/asme-test/debian)
#
# Run it as the ordinary user whose rootless Podman it measures, with the image loaded
# (`docker save IMAGE | podman load`). Each first start uses a mapping not used before
# (uid 2000 + run), so Podman has prepared nothing for it. ASME_BIN: a built asme.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/timing.sh
runs=10
if [ "${1:-}" = "-n" ]; then runs=$2; shift 2; fi
image=${1:-localhost/asme-test/debian}
podman image exists "$image" || { echo "bench/podman.sh: no $image in this user's podman" >&2; exit 1; }
if [ -z "${ASME_BIN:-}" ]; then cargo build --release --quiet; fi
asme=${ASME_BIN:-target/x86_64-unknown-linux-gnu/release/asme}

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() { podman run --rm --network none -v "$dir:/w" "$@"; }
fuse() { "$asme" --engine podman --strategy fuse run --rm --network none -v "$dir:/w" "$@"; }
# 1,000 small files: create, read, delete (as the container's user, in the bind mount).
work='cd /w && mkdir -p s && cd s && for i in $(seq 1000); do echo $i > f$i; done && cat f* >/dev/null && rm -f f*'

run "$image" true >/dev/null 2>&1 # warm: the image's own layers
fuse "$image" true >/dev/null 2>&1 # warm: Podman's pause process
base=$((2000 + $$ % 1000 * 20))
plain="" first="" later="" fused="" wplain="" wkeep="" wfuse=""
for ((i = 0; i < runs; i++)); do
  uid=$((base + i))
  plain+="$(timed run "$image" true) "
  first+="$(timed run --userns=keep-id:uid=$uid,gid=$uid "$image" true) "
  later+="$(timed run --userns=keep-id:uid=$uid,gid=$uid "$image" true) "
  fused+="$(timed fuse --user $uid:$uid "$image" true) "
  # The workload as root (plain: root is the user there), keep-id and fuse as uid 1000.
  wplain+="$(timed run "$image" sh -c "$work") "
  wkeep+="$(timed run --userns=keep-id:uid=$base,gid=$base "$image" sh -c "$work") "
  wfuse+="$(timed fuse --user $base:$base "$image" sh -c "$work") "
done
p=$(median <<<"$plain") f=$(median <<<"$first") l=$(median <<<"$later") u=$(median <<<"$fused")
wp=$(median <<<"$wplain") wk=$(median <<<"$wkeep") wf=$(median <<<"$wfuse")
echo "rootless podman, $image, $(podman info --format '{{.Store.GraphDriverName}}') storage, median of $runs (ms)"
printf '%-44s %6s\n' "plain run (true)" "$p"
printf '%-44s %6s  ratio %s\n' "keep-id, first start with a mapping" "$f" "$(ratio "$f" "$p")"
printf '%-44s %6s  ratio %s\n' "keep-id, later starts" "$l" "$(ratio "$l" "$p")"
printf '%-44s %6s  ratio %s\n' "asme fuse, every start (first or later)" "$u" "$(ratio "$u" "$p")"
printf '%-44s %6s\n' "plain run, 1,000 small files" "$wp"
printf '%-44s %6s  ratio %s\n' "keep-id (prepared), 1,000 small files" "$wk" "$(ratio "$wk" "$wp")"
printf '%-44s %6s  ratio %s\n' "asme fuse, 1,000 small files" "$wf" "$(ratio "$wf" "$wp")"
echo "samples: plain $plain| first $first| later $later| fuse $fused"
echo "workload samples: plain $wplain| keep-id $wkeep| fuse $wfuse"
