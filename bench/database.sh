#!/usr/bin/env bash
# A database in the user's folder (asme-test/postgres, whose entrypoint chowns its data to
# postgres and drops to it): plain `docker run`, asme with idmap, asme under auto (which
# picks fuse with recorded owners for this image: `--rm`, so asme's own server, run as the
# user), and asme under auto without `--rm` (the volume driver's FUSE mapping, run as root
# with passthrough), interleaved, printed as medians and ratios against plain docker.
#
#   sudo bench/database.sh [-n REPS] [--rows N]      (defaults: 5 repetitions, 200000 rows)
#
# Phases, each timed from the host:
#   ready:  `run -d` until pg_isready answers (container start and initdb of a new cluster);
#   insert: one psql: CREATE TABLE AS 200,000 generated rows, then CHECKPOINT (the writes
#           reach the files);
#   read:   one psql: a sequential scan that sums a column, after a restart of the server
#           (a new container over the same folder: its start is not timed).
# After each run the script counts whose the data folder's files are on the host: plain and
# idmap leave them postgres's (uid 100 in this image), which is why auto does not use idmap
# here; asme's fuse leaves them the user's.
#
# Runs as root (it cleans up the folders plain docker leaves root's). asme runs as
# ASME_BENCH_USER (default 1234) with ASME_BIN (default the release build).
set -euo pipefail
cd "$(dirname "$0")/.."

reps=5 rows=200000
while [ $# -gt 0 ]; do
  case $1 in
  -n) reps=${2:?}; shift 2 ;;
  --rows) rows=${2:?}; shift 2 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) echo "bench/database.sh: unknown argument '$1'" >&2; exit 1 ;;
  esac
done
die() { echo "bench/database.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run it as root"
image=asme-test/postgres
asme=${ASME_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/asme}
user=${ASME_BENCH_USER:-1234}
[ -x "$asme" ] || die "no asme at $asme: cargo build --release (or set ASME_BIN)"
docker image inspect "$image" >/dev/null 2>&1 || die "no $image: bash tests/images/build.sh postgres"
entry=$(getent passwd "$user") || die "no host user $user"
IFS=: read -r _ _ uid gid _ home _ <<<"$entry"

as_user() { setpriv --reuid="$uid" --regid="$gid" --init-groups env HOME="$home" PATH="$PATH" "$@"; }
label=asme-db-bench=$$
base=$(mktemp -d /var/tmp/asme-db.XXXXXX)
chmod 755 "$base"
cleanup() {
  local ids
  mapfile -t ids < <(docker ps -aq --filter "label=$label")
  [ "${#ids[@]}" = 0 ] || docker rm -f "${ids[@]}" >/dev/null 2>&1 || true
  rm -rf "$base"
}
trap cleanup EXIT

ms() { echo $(( $(date +%s%N) / 1000000 )); }
# start MODE NAME DIR: a detached server over DIR.
start() {
  local mount=$3:/var/lib/postgresql/data
  case $1 in
  plain) as_user docker run -d --rm --label "$label" --name "$2" -v "$mount" "$image" ;;
  idmap) as_user "$asme" --strategy idmap run -d --rm --label "$label" --name "$2" -v "$mount" "$image" ;;
  auto) as_user "$asme" run -d --rm --label "$label" --name "$2" -v "$mount" "$image" ;;
  driver) as_user "$asme" run -d --label "$label" --name "$2" -v "$mount" "$image" ;;
  esac >/dev/null
}
# stop MODE NAME: the driver's container has no --rm: removed with its volume.
stop() {
  docker stop "$2" >/dev/null
  [ "$1" != driver ] || docker rm -v "$2" >/dev/null
}
ready() {
  local deadline=$(( $(date +%s) + 120 ))
  until docker exec "$1" pg_isready -h /tmp >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$1 did not get ready"
    sleep 0.02
  done
}
sql() { docker exec -u postgres "$1" psql -h /tmp -v ON_ERROR_STOP=1 -Atq -c "$2" >/dev/null; }

declare -A samples owners
modes=(plain idmap auto driver)
for ((i = 1; i <= reps; i++)); do
  for ((k = 0; k < ${#modes[@]}; k++)); do
    mode=${modes[(i + k) % ${#modes[@]}]}
    echo "repetition $i/$reps: $mode" >&2
    dir=$base/$mode-$i
    mkdir "$dir" && chown "$uid:$gid" "$dir"
    name=asme-db-bench-$$-$mode-$i
    t0=$(ms); start "$mode" "$name" "$dir"; ready "$name"; t1=$(ms)
    sql "$name" "create table t as select g, md5(g::text) as h from generate_series(1, $rows) g; checkpoint;"
    t2=$(ms)
    stop "$mode" "$name"
    start "$mode" "$name-2" "$dir"; ready "$name-2"
    t3=$(ms)
    sql "$name-2" "select sum(g) from t where h <> ''"
    t4=$(ms)
    stop "$mode" "$name-2"
    samples[$mode:ready]+="$((t1 - t0)) "
    samples[$mode:insert]+="$((t2 - t1)) "
    samples[$mode:read]+="$((t4 - t3)) "
    owners[$mode]=$(find "$dir" -printf '%U:%G\n' | sort | uniq -c | sort -rn | awk '{printf "%s %s; ", $1, $2}')
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%d", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "asme-test/postgres, $rows rows, median of $reps (ms; ratio against plain docker)"
printf '%-40s %8s %16s %16s %16s\n' phase plain "asme idmap" "auto --rm (fuse)" "auto (driver)"
for row in "ready:start + initdb until ready" "insert:insert $rows rows + checkpoint" "read:sequential scan after a restart"; do
  key=${row%%:*}
  p=$(median <<<"${samples[plain:$key]}")
  line=$(printf '%-40s %8s' "${row#*:}" "$p")
  for mode in idmap auto driver; do
    m=$(median <<<"${samples[$mode:$key]}")
    line+=$(printf ' %9s (%4.2f)' "$m" "$(awk -v a="$m" -v b="$p" 'BEGIN {print a/b}')")
  done
  echo "$line"
done
echo
echo "owners of the data folder's entries on the host (count uid:gid), last repetition:"
for mode in "${modes[@]}"; do printf '  %-6s %s\n' "$mode" "${owners[$mode]}"; done
echo
echo "samples (ms): ready | insert | read"
for mode in "${modes[@]}"; do
  printf '  %-6s %s| %s| %s\n' "$mode" "${samples[$mode:ready]}" "${samples[$mode:insert]}" "${samples[$mode:read]}"
done
