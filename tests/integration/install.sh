#!/usr/bin/env bash
# Installs into a temporary prefix and builds a program outside the tree exactly as a user does:
# cc prog.c $(pkg-config --cflags --libs stagecoach), then runs it against the installed library.
src=$1 build=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "1..3"
if meson install -C "$build" --destdir "$tmp/dest" --no-rebuild >"$tmp/install.log" 2>&1; then
  echo "ok 1 - meson install"
else
  echo "not ok 1 - meson install"; sed 's/^/# /' "$tmp/install.log"; exit 0
fi
prefix=$(meson introspect "$build" --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
pc=$(dirname "$(find "$tmp/dest" -name stagecoach.pc | head -n 1)")
export PKG_CONFIG_PATH="$pc" PKG_CONFIG_SYSROOT_DIR="$tmp/dest"
libdir=$(dirname "$pc")
# The sanitizer build's library needs the sanitizer runtimes at link time.
extra=$(meson introspect "$build" --buildoptions | python3 -c \
  'import json,sys; v=next(o["value"] for o in json.load(sys.stdin) if o["name"]=="b_sanitize"); print("" if v=="none" else "-fsanitize="+v)')
if cc $extra -o "$tmp/embed" "$src/examples/embed.c" $(pkg-config --cflags --libs stagecoach) \
    >"$tmp/cc.log" 2>&1; then
  echo "ok 2 - an outside program compiles with pkg-config --cflags --libs stagecoach"
else
  echo "not ok 2 - an outside program compiles with pkg-config"; sed 's/^/# /' "$tmp/cc.log"; exit 0
fi
if LD_LIBRARY_PATH="$libdir" "$tmp/embed" >"$tmp/run.log" 2>&1 && grep -q "task.completed" "$tmp/run.log"; then
  echo "ok 3 - it runs against the installed shared library"
else
  echo "not ok 3 - it runs against the installed shared library"; sed 's/^/# /' "$tmp/run.log"
fi
: "$prefix"
