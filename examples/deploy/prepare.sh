#!/bin/sh
# prepare VERSION: builds the release artifact (a tarball of generated files) for VERSION.
. "$(dirname "$0")/common.sh"
version=$1
work=$(mktemp -d)
mkdir -p "$work/app"
echo "acme app $version" >"$work/app/VERSION"
for i in 1 2 3; do echo "asset $i of $version" >"$work/app/asset-$i.txt"; done
artifact="$root/releases/app-$version.tar.gz"
tar -C "$work" -czf "$artifact" app
rm -rf "$work"
echo "built $artifact ($(wc -c <"$artifact") bytes), mode $SC_MODE, attempt $SC_ATTEMPT"
output "{\"artifact\":\"$artifact\",\"version\":\"$version\"}"
