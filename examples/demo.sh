#!/usr/bin/env bash
# The main job: builds stagecoach and runs the embedding example (a task run to completion, then a
# restart recovery that carries on after its first stage, then a refused recovery).
# Installs missing packages with apt-get when run as root; otherwise prints the command.
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(gcc meson ninja-build pkg-config libuv1-dev libcjson-dev libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "demo: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "demo: missing packages; install them with:"
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
    exit 2
  fi
fi
[ -d build ] || meson setup build -Dtests=false >/dev/null
ninja -C build >/dev/null
exec ./build/examples/embed
