#!/usr/bin/env bash
# `make test`'s driver: runs the given make targets in order, stops at the first that fails,
# and ends with a table of where the time went (stage, minutes, result), so that every log of
# the suite (CI's included) says it.
set -u
rows=()
rc=0
for target in "$@"; do
    start=$(date +%s)
    make --no-print-directory "$target"
    rc=$?
    rows+=("$target $(( $(date +%s) - start )) $rc")
    [ "$rc" -ne 0 ] && break
done
echo
echo "make test: where the time went"
printf '  %-22s %8s  %s\n' stage minutes result
total=0
for row in "${rows[@]}"; do
    read -r name seconds code <<<"$row"
    total=$(( total + seconds ))
    printf '  %-22s %8s  %s\n' "$name" "$(awk -v s="$seconds" 'BEGIN{printf "%.1f", s/60}')" \
        "$([ "$code" -eq 0 ] && echo passed || echo "FAILED (exit $code)")"
done
printf '  %-22s %8s\n' total "$(awk -v s="$total" 'BEGIN{printf "%.1f", s/60}')"
exit "$rc"
