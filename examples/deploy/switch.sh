#!/bin/sh
# switch VERSION: points the live traffic ("current") at the green slot, keeping the old target
# as "previous". switch --back restores it (the compensation).
. "$(dirname "$0")/common.sh"
if [ "${1:-}" = "--back" ]; then
  if [ -L "$root/previous" ]; then
    ln -sfn "$(readlink "$root/previous")" "$root/current"
    echo "traffic switched back to $(readlink "$root/current")"
  else
    rm -f "$root/current"
    echo "no previous target: traffic switched off"
  fi
  exit 0
fi
[ -L "$root/current" ] && ln -sfn "$(readlink "$root/current")" "$root/previous"
ln -sfn "$root/slots/green" "$root/current"
echo "traffic now goes to $(cat "$root/current/app/VERSION")"
output "{\"live\":\"$1\"}"
