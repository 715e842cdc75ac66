#!/bin/sh
# verify VERSION: checks that the live target serves VERSION.
. "$(dirname "$0")/common.sh"
live=$(cat "$root/current/app/VERSION" 2>/dev/null || echo none)
if [ "$live" != "acme app $1" ]; then
  echo "live version is '$live', expected 'acme app $1'" >&2
  exit 1
fi
echo "verified: $live"
output "{\"verified\":true}"
