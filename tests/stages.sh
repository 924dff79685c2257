#!/usr/bin/env bash
# `make test`'s driver: runs the given make targets in order, stops at the first that fails,
# and ends with a table of where the time went (stage, minutes, result), so that every log of
# the suite (CI's included) says it.
#
#   tests/stages.sh [--alongside "TARGET..."] TARGET...
#
# --alongside: targets that need neither the lab nor podman (lint, unit tests) run one after
# the other beside the others, from the start, their output kept and shown at the end; a
# failure among them stops the others at their next stage. The total is the wall time.
set -u
alongside=()
if [ "${1:-}" = "--alongside" ]; then
    read -ra alongside <<<"$2"
    shift 2
fi
rows=()
rc=0
began=$(date +%s)
side_log=$(mktemp)
side_rows=$(mktemp)
trap 'rm -f "$side_log" "$side_rows"' EXIT
side=""
if [ "${#alongside[@]}" -gt 0 ]; then
    (
        for target in "${alongside[@]}"; do
            start=$(date +%s)
            make --no-print-directory "$target" >>"$side_log" 2>&1
            code=$?
            echo "$target $(( $(date +%s) - start )) $code" >>"$side_rows"
            [ "$code" -ne 0 ] && break
        done
    ) &
    side=$!
fi
side_failed() { awk '$3 != 0 {found=1} END {exit !found}' "$side_rows"; }
for target in "$@"; do
    if side_failed; then
        break
    fi
    start=$(date +%s)
    make --no-print-directory "$target"
    rc=$?
    rows+=("$target $(( $(date +%s) - start )) $rc")
    [ "$rc" -ne 0 ] && break
done
if [ -n "$side" ]; then
    wait "$side"
    echo
    echo "make test: the output of ${alongside[*]} (run alongside)"
    cat "$side_log"
    while read -r name seconds code; do
        rows+=("$name(alongside) $seconds $code")
        [ "$code" -ne 0 ] && [ "$rc" -eq 0 ] && rc=$code
    done <"$side_rows"
fi
echo
echo "make test: where the time went"
printf '  %-22s %8s  %s\n' stage minutes result
for row in "${rows[@]}"; do
    read -r name seconds code <<<"$row"
    printf '  %-22s %8s  %s\n' "$name" "$(awk -v s="$seconds" 'BEGIN{printf "%.1f", s/60}')" \
        "$([ "$code" -eq 0 ] && echo passed || echo "FAILED (exit $code)")"
done
printf '  %-22s %8s\n' "total (wall)" "$(awk -v s="$(( $(date +%s) - began ))" \
    'BEGIN{printf "%.1f", s/60}')"
exit "$rc"
