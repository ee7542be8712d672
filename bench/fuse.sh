#!/usr/bin/env bash
# Cost of `asme mount` (the uid/gid-mapping FUSE filesystem) against the host filesystem it
# sits on and against bindfs with the same map, in one run, printed as medians and ratios.
#
#   sudo bench/fuse.sh [-n REPS] [--small N] [--big-mib M] [--dir PARENT] [TARGET...]
#        defaults:      3          20000        1024          /var/tmp     all six
#   quick check: sudo bench/fuse.sh -n 1 --small 2000 --big-mib 64
#
# Targets (U:G is ASME_BENCH_USER, default 1234, and its group; every workload runs as root):
#   native     a root-owned folder on PARENT's filesystem
#   bindfs     bindfs --map=U/0:@G/@0 SRC MNT, mounted by root, over a folder owned by U:G
#   asme-root  asme mount --map U/0:@G/@0 SRC MNT, mounted by root, over a folder owned by U:G
#   asme-user  asme mount -o allow_other SRC MNT, mounted by U itself (the default map: U on
#              SRC shows as root in MNT), over a folder owned by U:G
#   asme-dev   asme-root with -o nouring: requests over /dev/fuse even where the fuse module
#              offers io_uring (the other asme targets use io_uring there; see the header)
#   asme-record  asme-root with -o record_owners (what the fuse strategy and the volume
#              driver's FUSE mapping use: owners a container sets kept in user.asme.owner)
# So root sees its files as 0:0 in every target, and on the host they belong to U:G in all
# but native; both are checked. Each target is mounted afresh for every repetition.
#
# Workloads (bench/workload.py, the same phases as bench/io.sh; each phase timed
# inside the process, so mounting and start-up are excluded):
#   small: one process creates N files of 1 KiB in 20 folders, stat()s every entry, reads
#          every file and deletes the tree with rm -rf (cache-warm after the create);
#   big:   one process writes M MiB sequentially and fsyncs; the host drops the page cache;
#          a second process reads the file back, so the read comes from the disk.
# The targets are interleaved (the order rotates every repetition), and the host runs sync
# and drops caches before every process. All samples are printed, then medians and ratios.
# This VM's ext4 is noisy (+-50% run to run): read the samples, not only the medians.
#
# Goals: asme as root at most 1.15x native for the 1 GiB write and read, at most 2x native
# for the small-file phases; bindfs / asme at least 3 for every figure, as root and as user.
#
# Runs as root (to drop caches). asme is ASME_BIN, default
# target/x86_64-unknown-linux-gnu/release/asme (`cargo build --release`). For the asme-user
# target (root reaching a FUSE mount of an ordinary user needs allow_other), the script
# makes, for the length of the run, /dev/fuse mode 0666 and adds `user_allow_other` to
# /etc/fuse.conf where they are not so already (most hosts have both), and puts back what
# it changed on exit. Every mount and temporary folder is removed on exit, even on failure.
# A phase running longer than ASME_BENCH_TIMEOUT seconds (default 1800) fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

all_targets=(native bindfs asme-root asme-dev asme-user asme-record)
source bench/options.sh
targets=()
for t in "${rest[@]}"; do
  case $t in
  native | bindfs | asme-root | asme-dev | asme-user | asme-record) [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t") ;;
  *) die "unknown argument '$t' (see --help; targets: ${all_targets[*]})" ;;
  esac
done
# Keep the canonical order whatever order they were given in.
if [ "${#targets[@]}" = 0 ]; then
  targets=("${all_targets[@]}")
else
  given=" ${targets[*]} " targets=()
  for t in "${all_targets[@]}"; do [[ $given == *" $t "* ]] && targets+=("$t"); done
fi
has() { [[ " ${targets[*]} " == *" $1 "* ]]; }

user=${ASME_BENCH_USER:-1234}
limit=${ASME_BENCH_TIMEOUT:-1800}
workload=$PWD/bench/workload.py
[[ $limit =~ ^[1-9][0-9]*$ ]] || die "ASME_BENCH_TIMEOUT '$limit' is not a positive whole number"
[ "$(id -u)" = 0 ] || die "run it as root (it drops the page cache, mounts, and runs asme as user $user)"
python=/usr/bin/python3
[ -x "$python" ] || python=$(command -v python3) || die "python3 is needed for the workloads"
command -v setpriv >/dev/null || die "setpriv (util-linux) is needed to run asme as user $user"
command -v findmnt >/dev/null || die "findmnt (util-linux) is needed to check the mounts"
entry=$(getent passwd "$user") ||
  die "no host user $user: create one (useradd -u 1234 -m asme1234) or set ASME_BENCH_USER"
IFS=: read -r uname _ uid gid _ home _ <<<"$entry"
((uid != 0)) || die "ASME_BENCH_USER must not be root"
[ -d "$parent" ] || die "$parent is not a folder"
if has bindfs; then
  command -v bindfs >/dev/null || die "bindfs is not installed (apt-get install bindfs), or leave out the bindfs target"
fi
as_user() { setpriv --reuid="$uid" --regid="$gid" --init-groups env HOME="$home" PATH="$PATH" "$@"; }
asme=
if has asme-root || has asme-dev || has asme-user || has asme-record; then
  asme=${ASME_BIN:-$PWD/target/x86_64-unknown-linux-gnu/release/asme}
  [ -x "$asme" ] || die "no asme binary at $asme: run 'cargo build --release' (or set ASME_BIN)"
  "$asme" mount --help >/dev/null 2>&1 || die "$asme has no working 'mount' command ('$asme mount --help' fails): rebuild it"
  if has asme-user; then
    as_user "$asme" --version >/dev/null 2>&1 || die "user $user cannot run $asme (a folder on the way is closed?)"
  fi
fi

# What this run leaves behind: mounts, the temporary folders, and the FUSE settings changed
# for asme-user. Unmounting comes first, so rm -rf never goes through a mount.
base='' fuse_conf_saved='' fuse_conf_created=0 fuse_mode_saved=''
mounted() { findmnt -n --mountpoint "$1" >/dev/null 2>&1; }
cleanup() {
  local t left=0
  if [ -n "$base" ]; then
    for t in "${all_targets[@]}"; do
      if mounted "$base/$t/mnt"; then
        umount "$base/$t/mnt" 2>/dev/null || umount -l "$base/$t/mnt" 2>/dev/null || true
      fi
      if mounted "$base/$t/mnt"; then
        echo "bench/fuse.sh: could not unmount $base/$t/mnt" >&2
        left=1
      fi
    done
    if ((left)); then
      echo "bench/fuse.sh: leaving $base in place (something is still mounted there)" >&2
    else
      rm -rf "$base"
    fi
  fi
  if [ -n "$fuse_conf_saved" ]; then cat "$fuse_conf_saved" >/etc/fuse.conf && rm -f "$fuse_conf_saved"; fi
  if ((fuse_conf_created)); then rm -f /etc/fuse.conf; fi
  if [ -n "$fuse_mode_saved" ]; then chmod "$fuse_mode_saved" /dev/fuse; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Root may use a FUSE mount of an ordinary user only if it was mounted with allow_other,
# which fusermount permits only with user_allow_other in /etc/fuse.conf; and the user must
# be able to open /dev/fuse.
fuse_changes=()
if has asme-user; then
  [ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
  if ! grep -Eq '^[[:space:]]*user_allow_other([[:space:]]|$)' /etc/fuse.conf 2>/dev/null; then
    if [ -e /etc/fuse.conf ]; then
      fuse_conf_saved=$(mktemp /tmp/asme-fuse-conf.XXXXXX)
      cat /etc/fuse.conf >"$fuse_conf_saved"
    else
      fuse_conf_created=1
    fi
    echo user_allow_other >>/etc/fuse.conf ||
      die "cannot add user_allow_other to /etc/fuse.conf; add it by hand, or leave out the asme-user target"
    fuse_changes+=("user_allow_other added to /etc/fuse.conf")
  fi
  mode=$(stat -c %a /dev/fuse)
  if [ "$mode" != 666 ]; then
    chmod 0666 /dev/fuse || die "cannot make /dev/fuse mode 0666 (it is $mode); leave out the asme-user target"
    fuse_mode_saved=$mode
    fuse_changes+=("/dev/fuse mode $mode -> 666")
  fi
fi

base=$(mktemp -d "$parent/asme-fuse.XXXXXX")
chmod 755 "$base" # the user must be able to reach its own folders
for t in "${targets[@]}"; do
  if [ "$t" = native ]; then
    mkdir -m 755 "$base/native"
    continue
  fi
  mkdir -m 755 "$base/$t" "$base/$t/src" "$base/$t/mnt"
  chown "$uid:$gid" "$base/$t/src"
  [ "$t" = asme-user ] && chown "$uid:$gid" "$base/$t/mnt" # fusermount wants it writable
done
# The run uses its own copy of asme, so a rebuild meanwhile cannot mix two builds.
asme_built=
if [ -n "$asme" ]; then
  asme_built="$(date -r "$asme" '+%F %T'), sha256 $(sha256sum "$asme" | cut -c 1-12)"
  cp "$asme" "$base/asme"
  asme_src=$asme asme=$base/asme
fi
fstype=$(df --output=fstype "$base" | tail -n 1 | tr -d ' ')
device=$(df --output=source "$base" | tail -n 1 | tr -d ' ')

# dir TARGET: the folder the workload runs in. src TARGET: the host folder beneath it.
dir() { if [ "$1" = native ]; then echo "$base/native"; else echo "$base/$1/mnt"; fi; }
src() { if [ "$1" = native ]; then echo "$base/native"; else echo "$base/$1/src"; fi; }
owner() { if [ "$1" = native ]; then echo 0:0; else echo "$uid:$gid"; fi; }
# wait_mount MNT yes|no: up to 10 s for the mount to appear or go.
wait_mount() {
  local i
  for ((i = 0; i < 100; i++)); do
    if [ "$2" = yes ] && mounted "$1"; then return 0; fi
    if [ "$2" = no ] && ! mounted "$1"; then return 0; fi
    sleep 0.1
  done
  return 1
}
log=$base/mount.log
mount_target() {
  local t=$1 mnt=$base/$1/mnt kind
  [ "$t" = native ] && return 0
  case $t in
  bindfs) bindfs --map="$uid/0:@$gid/@0" "$(src "$t")" "$mnt" ;;
  asme-root) "$asme" mount --map "$uid/0:@$gid/@0" "$(src "$t")" "$mnt" ;;
  asme-record) "$asme" mount --map "$uid/0:@$gid/@0" -o record_owners "$(src "$t")" "$mnt" ;;
  asme-dev) "$asme" mount --map "$uid/0:@$gid/@0" -o nouring "$(src "$t")" "$mnt" ;;
  asme-user) as_user "$asme" mount -o allow_other "$(src "$t")" "$mnt" ;;
  esac >"$log" 2>&1 </dev/null || { cat "$log" >&2; die "mounting $t failed"; }
  wait_mount "$mnt" yes || { cat "$log" >&2; die "$t: the mount command returned, but $mnt is not mounted"; }
  kind=$(findmnt -n -o FSTYPE --mountpoint "$mnt")
  [[ $kind == fuse* ]] || die "$t: $mnt is a '$kind' mount, not FUSE"
}
umount_target() {
  local t=$1 mnt=$base/$1/mnt
  case $t in
  native) return 0 ;;
  bindfs) umount "$mnt" ;;
  asme-root | asme-record | asme-dev) "$asme" umount "$mnt" ;;
  asme-user) as_user "$asme" umount "$mnt" ;;
  esac >"$log" 2>&1 </dev/null || { cat "$log" >&2; die "unmounting $t failed"; }
  wait_mount "$mnt" no || die "$t: the unmount command returned, but $mnt is still mounted"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

declare -A samples
# phase TARGET WORKLOAD COUNT [HOSTDIR OWNER]: one timed process; records its figures.
phase() {
  local t=$1 out name value rc=0
  drop_caches
  out=$(timeout -k 10 "$limit" "$python" "$workload" "$(dir "$t")" "${@:2}") || rc=$?
  ((rc != 124 && rc != 137)) || die "$t $2 ran longer than $limit s (ASME_BENCH_TIMEOUT)"
  ((rc == 0)) || die "$t $2 failed (exit status $rc)"
  while read -r name value; do samples[$t:$name]+="$value "; done <<<"$out"
}
# run_target TARGET: mount, the small workload, the big write and the cold big read, unmount.
run_target() {
  local t=$1 got
  mount_target "$t"
  if [ "$t" = native ]; then phase "$t" small "$small"; else phase "$t" small "$small" "$(src "$t")" "$(owner "$t")"; fi
  phase "$t" bigwrite "$big_mib"
  got=$(stat -c %u:%g "$(src "$t")/big")
  [ "$got" = "$(owner "$t")" ] || die "$t: the file root wrote belongs to $got on the host, not $(owner "$t")"
  got=$(stat -c %u:%g "$(dir "$t")/big")
  [ "$got" = 0:0 ] || die "$t: the file root wrote shows as $got in the mount, not 0:0"
  phase "$t" bigread "$big_mib"
  rm -f "$(dir "$t")/big"
  umount_target "$t"
  [ -z "$(ls -A "$(src "$t")")" ] || die "$t: $(src "$t") is not empty after the run"
}

# Untimed check of every FUSE target (mount, a file from root, both owners, unmount); it
# also records the mount options and warms the binaries up.
declare -A mount_info
for t in "${targets[@]}"; do
  [ "$t" = native ] && continue
  mount_target "$t"
  mount_info[$t]=$(findmnt -n -o FSTYPE,OPTIONS --mountpoint "$base/$t/mnt")
  echo probe >"$base/$t/mnt/probe" || die "$t: root cannot create a file in the mount"
  got=$(stat -c %u:%g "$base/$t/mnt/probe")
  [ "$got" = 0:0 ] || die "$t: a file root created shows as $got in the mount, not 0:0"
  got=$(stat -c %u:%g "$base/$t/src/probe")
  [ "$got" = "$uid:$gid" ] || die "$t: a file root created in the mount belongs to $got on the host, not $uid:$gid"
  rm "$base/$t/mnt/probe"
  umount_target "$t"
done

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
start=$SECONDS
orders=()
n=${#targets[@]}
for ((i = 0; i < reps; i++)); do
  order=("${targets[@]:i%n}" "${targets[@]:0:i%n}")
  orders+=("$((i + 1)): ${order[*]}")
  for t in "${order[@]}"; do
    echo "repetition $((i + 1))/$reps: $t" >&2
    run_target "$t"
  done
done
elapsed=$((SECONDS - start))
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.1f", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a/b : 0}'; }
keys=(create stat read delete bigwrite bigread)
declare -A label=(
  [create]="create $small files" [stat]="stat walk of them" [read]="read them all"
  [delete]="delete them (rm -rf)" [bigwrite]="write $big_mib MiB + fsync"
  [bigread]="read $big_mib MiB (cold cache)"
)
declare -A med
for t in "${targets[@]}"; do
  for k in "${keys[@]}"; do med[$t:$k]=$(median <<<"${samples[$t:$k]}"); done
done

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "machine     nproc $(nproc), ${cpu:-unknown cpu}, $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
echo "kernel      $(uname -r)"
echo "load avg    $load_start at start, $load_end at end of the timed runs"
echo "filesystem  $fstype ($device), folders in $base"
has bindfs && echo "bindfs      $(bindfs --version 2>&1 | head -n 1)"
[ -n "$asme" ] && echo "asme        $("$asme" --version) ($asme_src, built $asme_built)"
echo "open files  $(ulimit -Sn) soft, $(ulimit -Hn) hard (inherited by the FUSE servers)"
for t in "${targets[@]}"; do
  [ "$t" = native ] || printf 'mount       %-10s %s\n' "$t" "${mount_info[$t]}"
done
echo "user        $uname ($uid:$gid): the map's U:G, owner of the FUSE sources, asme-user's mounter"
uring=$(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null || echo absent)
if [ "$uring" = Y ]; then
  echo "transport   FUSE over io_uring offered (enable_uring Y): asme targets use it, asme-dev /dev/fuse"
else
  echo "transport   FUSE over io_uring not offered (enable_uring $uring): every asme target uses /dev/fuse"
fi
[ "${#fuse_changes[@]}" = 0 ] || echo "fuse setup  for this run only: $(printf '%s; ' "${fuse_changes[@]}" | sed 's/; $//')"
echo "runs        median of $reps, interleaved; $small files of 1 KiB, $big_mib MiB sequential; workloads as root; timed inside the process"
echo

printf '%-32s' "median ms"
for t in "${targets[@]}"; do printf ' %11s' "$t"; done
echo
for k in "${keys[@]}"; do
  printf '%-32s' "${label[$k]}"
  for t in "${targets[@]}"; do printf ' %11s' "${med[$t:$k]}"; done
  echo
done

missed=0 goals=0 row=
# Table rows are built in $row (add FORMAT ARGS...) and printed without trailing blanks.
add() {
  local f=$1
  shift
  # shellcheck disable=SC2059 # the format is ours
  row+=$(printf "$f" "$@")
}
flush() {
  echo "${row%"${row##*[! ]}"}"
  row=
}
# cell VALUE [OP LIMIT]: a ratio, with ok/MISSED against a goal.
cell() {
  local verdict=
  if [ $# = 3 ]; then
    goals=$((goals + 1))
    if awk -v r="$1" -v l="$3" "BEGIN {exit !(r $2 l)}"; then verdict=ok; else
      verdict=MISSED
      missed=$((missed + 1))
    fi
  fi
  add ' %-12s' "$1 $verdict"
}
if has native && [ "$n" -gt 1 ]; then
  echo
  echo "target / native (median over median; the goals are for asme-root)"
  add '%-32s %-7s' workload goal
  for t in "${targets[@]}"; do [ "$t" = native ] || add ' %-12s' "$t"; done
  flush
  for k in "${keys[@]}"; do
    lim=2
    [[ $k == big* ]] && lim=1.15
    add '%-32s %-7s' "${label[$k]}" "<= $lim"
    for t in "${targets[@]}"; do
      [ "$t" = native ] && continue
      r=$(ratio "${med[$t:$k]}" "${med[native:$k]}")
      if [ "$t" = asme-root ]; then cell "$r" '<=' "$lim"; else cell "$r"; fi
    done
    flush
  done
fi
if has bindfs && { has asme-root || has asme-user; }; then
  echo
  echo "bindfs / asme (median over median: how many times faster asme is than bindfs)"
  add '%-32s %-7s' workload goal
  for t in asme-root asme-user; do has "$t" && add ' %-12s' "$t"; done
  flush
  for k in "${keys[@]}"; do
    add '%-32s %-7s' "${label[$k]}" ">= 3"
    for t in asme-root asme-user; do
      has "$t" && cell "$(ratio "${med[bindfs:$k]}" "${med[$t:$k]}")" '>=' 3
    done
    flush
  done
fi
echo
echo "samples in ms, by repetition (run order: $(printf '%s; ' "${orders[@]}" | sed 's/; $//'))"
for k in "${keys[@]}"; do
  for t in "${targets[@]}"; do
    if [ "$t" = "${targets[0]}" ]; then printf '  %-10s' "$k"; else printf '  %-10s' ''; fi
    printf ' %-10s' "$t"
    for s in ${samples[$t:$k]}; do printf ' %10s' "$s"; done
    echo
  done
done
echo
((goals == 0)) || echo "$missed of $goals goals missed"
echo "took $elapsed s of timed repetitions"
