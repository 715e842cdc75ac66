#!/usr/bin/env bash
# cli_bench: wall time per stage of `stagecoach run` on a 200-stage pipeline of `true` commands,
# beside the same number of uv_spawn + wait of `/bin/true` from a small process (spawn_bench).
# This machine is noisy, so the two are measured in turn, five rounds, and the medians are printed,
# with the median of the per-round ratios. exec_bench measures the ratio inside one process with
# 1,000 and 100,000 stages in the plan and 10,000 other tasks held.
# Usage: cli_bench.sh BUILD_DIR [STAGES] [ROUNDS]
set -euo pipefail
build=$1
n=${2:-200}
rounds=${3:-5}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
  printf '{"plan":"bench","config":{"stages":['
  for i in $(seq 1 "$n"); do
    [ "$i" -gt 1 ] && printf ','
    printf '{"name":"s%d","kind":"exec","run":"true"}' "$i"
  done
  printf ']}}\n'
} >"$tmp/pipeline.json"
us_per_stage() { # us_per_stage COMMAND...: wall time of the command divided by n, in us
  local start end
  start=$(date +%s%N)
  "$@" >/dev/null
  end=$(date +%s%N)
  echo $(( (end - start) / 1000 / n ))
}
for r in $(seq 1 "$rounds"); do
  base=$("$build/tests/bench/spawn_bench" "$n" | awk '{print $2}')
  plain=$(us_per_stage "$build/stagecoach" run "$tmp/pipeline.json" --plain --no-prompt)
  rm -f "$tmp/log.jsonl"
  logged=$(us_per_stage "$build/stagecoach" run "$tmp/pipeline.json" --plain --no-prompt \
    --log "$tmp/log.jsonl")
  echo "$base $plain $logged"
done >"$tmp/rounds"
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
echo "baseline_spawn_us $(awk '{print $1}' "$tmp/rounds" | median) us/spawn"
echo "cli_exec_stage_overhead_us $(awk '{print $2}' "$tmp/rounds" | median) us/stage"
echo "cli_exec_stage_logged_us $(awk '{print $3}' "$tmp/rounds" | median) us/stage"
echo "cli_exec_stage_ratio $(awk '{printf "%.2f\n", $2 / $1}' "$tmp/rounds" | median) x"
