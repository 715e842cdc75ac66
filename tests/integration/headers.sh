#!/usr/bin/env bash
# Each public header compiles on its own, as C11 and as C++, with -pedantic -Werror.
root=$1; shift
inc="-I$root/events/include -I$root/engine/include -I$root/adapters/jsonl/include -I$root/adapters/socket/include -I$root/adapters/memory/include -I$root/adapters/sqlite/include $(pkg-config --cflags libuv libcjson)"
echo "1..$(( $# * 2 ))"
n=0
for h in "$@"; do
  name=$(basename "$h")
  n=$((n + 1))
  if echo "#include <stagecoach/$name>" | cc -std=c11 -pedantic -Wall -Wextra -Werror $inc -x c -fsyntax-only - 2>/tmp/hdr.$$; then
    echo "ok $n - $name compiles alone as C11"
  else
    echo "not ok $n - $name compiles alone as C11"; sed 's/^/# /' /tmp/hdr.$$
  fi
  n=$((n + 1))
  if command -v c++ >/dev/null && echo "#include <stagecoach/$name>" | c++ -std=c++11 -pedantic -Wall -Werror $inc -x c++ -fsyntax-only - 2>/tmp/hdr.$$; then
    echo "ok $n - $name compiles alone as C++11"
  else
    echo "not ok $n - $name compiles alone as C++11"; sed 's/^/# /' /tmp/hdr.$$ 2>/dev/null
  fi
done
rm -f /tmp/hdr.$$
