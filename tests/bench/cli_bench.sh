#!/usr/bin/env bash
# cli_bench: wall time per stage of `stagecoach run` on a 200-stage pipeline of `true` commands,
# beside the same number of uv_spawn + wait of `/bin/sh -c true` (spawn_bench) in the same run.
set -euo pipefail
build=$1
n=${2:-200}
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
"$build/tests/bench/spawn_bench" "$n"
start=$(date +%s%N)
"$build/stagecoach" run "$tmp/pipeline.json" --plain --no-prompt >/dev/null
end=$(date +%s%N)
echo "cli_exec_stage_overhead_us $(( (end - start) / 1000 / n )) us/stage"
start=$(date +%s%N)
"$build/stagecoach" run "$tmp/pipeline.json" --plain --no-prompt --log "$tmp/log.jsonl" >/dev/null
end=$(date +%s%N)
echo "cli_exec_stage_logged_us $(( (end - start) / 1000 / n )) us/stage"
