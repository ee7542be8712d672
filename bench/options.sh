# Sourced by bench/io.sh and bench/fuse.sh: their common options and checks.
#   -n REPS, --small N, --big-mib M, --dir PARENT, -h/--help (prints the script's header).
# Sets reps, small, big_mib and parent; what is not one of these is left in `rest`.

die() {
  echo "bench/$(basename "$0"): $*" >&2
  exit 1
}

reps=3 small=20000 big_mib=1024 parent=/var/tmp rest=()
while [ $# -gt 0 ]; do
  case $1 in
  -n) reps=${2:?}; shift 2 ;;
  --small) small=${2:?}; shift 2 ;;
  --big-mib) big_mib=${2:?}; shift 2 ;;
  --dir) parent=${2:?}; shift 2 ;;
  -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
  *) rest+=("$1"); shift ;;
  esac
done
for v in "$reps" "$small" "$big_mib"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || die "'$v' is not a positive whole number"
done
