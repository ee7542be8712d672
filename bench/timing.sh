# Timing helpers shared by the start-up benchmarks (sourced, not run).
#   ms              the wall clock in milliseconds
#   timed CMD...    runs CMD (output dropped) and prints how many milliseconds it took
#   median          the median of whole numbers given on stdin (spaces or lines), whole
#   ratio A B       A / B with two decimals
ms() { echo $(( $(date +%s%N) / 1000000 )); }
timed() { local t0; t0=$(ms); "$@" >/dev/null 2>&1; echo $(( $(ms) - t0 )); }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {printf "%d", (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a/b : 0}'; }
