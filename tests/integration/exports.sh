#!/usr/bin/env bash
# The shared library exports the public API and nothing else (docs/design.md, "ABI"): every name
# in its dynamic symbol table is a public sc_ name, no internal sc__ name is there, and the names
# are exactly the functions that the installed headers declare with SC_EXTERN.
lib=$1; shift
echo "1..4"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

nm -D --defined-only "$lib" | awk '$2 ~ /^[A-Za-z]$/ {print $3}' | sed 's/@.*//' | sort -u \
  >"$tmp/exported"
# The functions the headers declare: each SC_EXTERN declaration, joined to one line.
for h in "$@"; do
  awk '/^SC_EXTERN /{decl=$0; while (decl !~ /\(/ && (getline line) > 0) decl = decl line; print decl}' "$h"
done | sed -E 's/\(.*//; s/.*[ *]//' | sort -u >"$tmp/declared"

n=$(wc -l <"$tmp/exported")
if [ "$n" -ge 50 ] && grep -qx sc_engine_new "$tmp/exported" && grep -qx sc_jsonl_open "$tmp/exported"; then
  echo "ok 1 - the library exports the public API ($n names)"
else
  echo "not ok 1 - the library exports the public API ($n names)"; sed 's/^/# /' "$tmp/exported"
fi

bad=$(grep -v '^sc_[a-z]' "$tmp/exported")
if [ -z "$bad" ]; then
  echo "ok 2 - every exported name is a public sc_ name"
else
  echo "not ok 2 - every exported name is a public sc_ name"; echo "$bad" | sed 's/^/# /'
fi

internal=$(grep '^sc__' "$tmp/exported")
if [ -z "$internal" ]; then
  echo "ok 3 - no internal sc__ name is exported"
else
  echo "not ok 3 - no internal sc__ name is exported"; echo "$internal" | sed 's/^/# /'
fi

if diff "$tmp/declared" "$tmp/exported" >"$tmp/diff"; then
  echo "ok 4 - the exported names are exactly the SC_EXTERN declarations of the headers"
else
  echo "not ok 4 - the exported names are exactly the SC_EXTERN declarations of the headers"
  echo "# < declared, not exported; > exported, not declared"
  sed 's/^/# /' "$tmp/diff"
fi
