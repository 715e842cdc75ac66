#!/bin/sh
# deploy ARTIFACT: unpacks the artifact into the idle slot. Slow on purpose (about 2 s) so that
# the quickstart can kill the run in the middle of it. Exit 2 (missing artifact) is not retried.
. "$(dirname "$0")/common.sh"
artifact=${1:-}
[ -f "$artifact" ] || { echo "no artifact '$artifact'" >&2; exit 2; }
slot="$root/slots/green"
rm -rf "$slot.tmp"
mkdir -p "$slot.tmp"
for step in 1 2 3 4; do
  echo "unpacking ($step/4)"
  sleep 0.5
done
tar -C "$slot.tmp" -xzf "$artifact"
rm -rf "$slot"
mv "$slot.tmp" "$slot"
echo "deployed $(cat "$slot/app/VERSION") to the green slot"
output "{\"slot\":\"$slot\"}"
