#!/usr/bin/env bash
# Bind-mount I/O cost of asme's idmap strategy: the same workloads through `docker run -v`
# and through `asme --strategy idmap run -v`, on folders of the same host filesystem,
# printed as medians and the ratio asme/plain (goal: at most 1.05).
#
#   sudo bench/io.sh [-n REPS] [--small N] [--big-mib M] [--dir PARENT] [--driver]
#        defaults:     3          20000        1024          /var/tmp
#   quick check: sudo bench/io.sh -n 1 --small 2000 --big-mib 64
#
# --driver: asme runs without --rm, so its bind mount becomes a volume of asme's volume
# driver (the container and its volume are removed after each phase): the same idmapped
# mount, made by the plugin instead of the agent's lease. Goal: the same ratios.
#
# Workloads (each phase timed inside the container by bench/workload.py, so container
# start-up is excluded):
#   small: one container creates N files of 1 KiB in 20 folders, stat()s every entry, reads
#          every file and deletes the tree with rm -rf (cache-warm after the create);
#   big:   one container writes M MiB sequentially and fsyncs; the host drops the page cache;
#          a second container reads the file back, so the read comes from the disk.
# Plain and asme repetitions are interleaved (the order alternates per repetition), and the
# host runs sync and drops caches before every container.
#
# Runs as root (to drop caches); asme runs as ASME_BENCH_USER (default 1234, a docker group
# member) with ASME_BIN (default target/x86_64-unknown-linux-gnu/release/asme, built with
# `cargo build --release`). Plain docker writes as root into a root-owned folder, asme as
# the container's root through the idmapped mount into a folder owned by that user.
set -euo pipefail
cd "$(dirname "$0")/.."

source bench/options.sh
via=lease
if [ "${rest[0]:-}" = --driver ]; then via=driver rest=("${rest[@]:1}"); fi
[ ${#rest[@]} = 0 ] || die "unknown argument '${rest[0]}' (see --help)"

image=${ASME_BENCH_IMAGE:-asme-test/debian}
asme=${ASME_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/asme}
user=${ASME_BENCH_USER:-1234}
code=$(cat bench/workload.py)

[ "$(id -u)" = 0 ] || die "run it as root (it drops the page cache and runs asme as user $user)"
docker info >/dev/null 2>&1 || die "the Docker engine is unreachable ('docker info' fails)"
docker image inspect "$image" >/dev/null 2>&1 ||
  die "image $image is missing: build it with 'bash tests/images/build.sh debian'"
[ -x "$asme" ] || die "no asme binary at $asme: run 'cargo build --release' (or set ASME_BIN)"
entry=$(getent passwd "$user") || die "no host user $user (set ASME_BENCH_USER)"
IFS=: read -r _ _ uid gid _ home _ <<<"$entry"
[ -d "$parent" ] || die "$parent is not a folder"

# Everything the run leaves behind: the temp folders (files in the plain one belong to
# root, which is us) and any container still running after an interruption.
label=asme-io-bench=$$
base=
cleanup() {
  local ids
  mapfile -t ids < <(docker ps -aq --filter "label=$label" 2>/dev/null)
  if [ "${#ids[@]}" -gt 0 ]; then docker rm -f "${ids[@]}" >/dev/null 2>&1 || true; fi
  if [ -n "$base" ]; then rm -rf "$base"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

base=$(mktemp -d "$parent/asme-io.XXXXXX")
chmod 755 "$base" # the user must be able to reach its own folder
mkdir -m 700 "$base/plain" "$base/asme"
chown "$uid:$gid" "$base/asme"
fstype=$(df --output=fstype "$base" | tail -n 1)

as_user() { setpriv --reuid="$uid" --regid="$gid" --init-groups env HOME="$home" PATH="$PATH" "$@"; }
run_plain() { docker run --rm --label "$label" -v "$base/plain:/w" "$image" "$@"; }
run_asme() {
  if [ "$via" = lease ]; then
    as_user "$asme" --strategy idmap run --rm --label "$label" -v "$base/asme:/w" "$image" "$@"
    return
  fi
  # The driver: a container that outlives the run; removed with its volume afterwards.
  local name=asme-io-$$-$((++runs_via_driver)) status=0
  as_user "$asme" --strategy idmap run --name "$name" --label "$label" -v "$base/asme:/w" "$image" "$@" || status=$?
  docker rm -v "$name" >/dev/null
  return "$status"
}
runs_via_driver=0
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# Which strategy asme really uses here (this also warms it up: image probe, idmap agent).
if ! check=$(as_user "$asme" -v --strategy idmap run --rm --label "$label" -v "$base/asme:/w" "$image" true 2>&1 >/dev/null); then
  printf '%s\n' "$check" >&2
  die "'asme --strategy idmap run' failed here, so this benchmark cannot measure idmap"
fi
strategy=$(grep -m 1 '^asme: strategy ' <<<"$check" || true)
if [[ $strategy != "asme: strategy idmap"* ]] || grep -q 'using the user strategy' <<<"$check"; then
  printf '%s\n' "$check" >&2
  echo "!!! asme did NOT use the idmap strategy (it fell back to 'user');" >&2
  echo "!!! these figures would not measure idmapped mounts, so none are taken." >&2
  exit 1
fi
run_plain true

declare -A samples
# phase MODE WORKLOAD COUNT: one container; records its figures and checks the mount kind.
phase() {
  local mode=$1 out name value want=plain
  [ "$mode" = asme ] && want=idmapped
  drop_caches
  out=$("run_$mode" python3 -c "$code" --mount-kind /w "$2" "$3") || die "$mode $2 failed"
  while read -r name value; do
    case $name in
    mount) [ "$value" = "$want" ] || die "$mode run: /w is a $value mount, expected $want" ;;
    *) samples[$mode:$name]+="$value " ;;
    esac
  done <<<"$out"
}
# big MODE: write, drop caches, read back; checks who owns the file on the host.
big() {
  local mode=$1 owner want=0:0
  [ "$mode" = asme ] && want=$uid:$gid
  phase "$mode" bigwrite "$big_mib"
  owner=$(stat -c %u:%g "$base/$mode/big")
  [ "$owner" = "$want" ] || die "$mode: the written file belongs to $owner on the host, not $want"
  phase "$mode" bigread "$big_mib"
  rm -f "$base/$mode/big"
}

start=$SECONDS
for ((i = 1; i <= reps; i++)); do
  if ((i % 2)); then order=(plain asme); else order=(asme plain); fi
  for mode in "${order[@]}"; do
    echo "repetition $i/$reps: $mode" >&2
    phase "$mode" small "$small"
    big "$mode"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.1f", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "kernel      $(uname -r)"
echo "filesystem  $fstype ($base)"
echo "docker      $(docker version --format '{{.Server.Version}}')"
echo "asme        ${strategy#asme: } (made by: $via)"
echo "runs        median of $reps, $small files of 1 KiB, $big_mib MiB sequential; timed inside the container"
echo
printf '%-32s %10s %10s %7s  %s\n' workload "plain ms" "asme ms" ratio goal
over=0
for row in "create:create $small files" "stat:stat walk of them" "read:read them all" \
  "delete:delete them (rm -rf)" "bigwrite:write $big_mib MiB + fsync" "bigread:read $big_mib MiB (cold cache)"; do
  key=${row%%:*}
  p=$(median <<<"${samples[plain:$key]}")
  a=$(median <<<"${samples[asme:$key]}")
  ratio=$(awk -v a="$a" -v p="$p" 'BEGIN {printf "%.3f", a/p}')
  verdict=ok
  if awk -v r="$ratio" 'BEGIN {exit !(r > 1.05)}'; then verdict=over; over=$((over + 1)); fi
  printf '%-32s %10s %10s %7s  <= 1.05 %s\n' "${row#*:}" "$p" "$a" "$ratio" "$verdict"
done
echo
echo "samples in run order (ms): plain | asme"
for key in create stat read delete bigwrite bigread; do
  printf '  %-9s %s| %s\n' "$key" "${samples[plain:$key]}" "${samples[asme:$key]}"
done
echo
echo "$over of 6 ratios above 1.05; took $((SECONDS - start)) s"
