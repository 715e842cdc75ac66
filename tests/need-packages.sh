# Sourced by the front-door scripts (examples/quickstart.sh, tests/run.sh, tests/bench/run.sh):
#   need_packages PKG...        installs the Debian packages that are missing, with apt-get when run
#                               as root; otherwise prints the command to run and returns 2.
#   step WHAT COMMAND...        runs COMMAND with its output kept aside; on failure says which step
#                               failed, shows the last lines of the command's own output and returns
#                               the command's status. No step fails silently.
#   setup_build DIR MESON_ARG...
#                               makes DIR a configured meson build folder: sets it up when it is
#                               missing, sets it up again when an interrupted or failed setup left it
#                               half-configured (no build.ninja or no coredata), reconfigures it
#                               otherwise. On failure shows the end of DIR/meson-logs/meson-log.txt.
# Every message starts with the name of the script that sourced this file.

frontdoor_name=$(basename "${0:-stagecoach}")

need_packages() {
  local missing=() p log
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "$frontdoor_name: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    log=$(mktemp)
    if apt-get update -qq >"$log" 2>&1 && apt-get install -y -qq "${missing[@]}" >>"$log" 2>&1; then
      rm -f "$log"
      return 0
    fi
    echo "$frontdoor_name: apt-get install ${missing[*]} failed; the last lines it printed:" >&2
    tail -n 20 "$log" | sed 's/^/  | /' >&2
    rm -f "$log"
    return 2
  fi
  echo "$frontdoor_name: missing packages; install them with:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  return 2
}

step() {
  local what=$1 log status
  shift
  log=$(mktemp)
  "$@" >"$log" 2>&1
  status=$?
  if [ $status -ne 0 ]; then
    echo "$frontdoor_name: $what failed (exit $status): $*" >&2
    echo "$frontdoor_name: the last lines it printed:" >&2
    tail -n 30 "$log" | sed 's/^/  | /' >&2
  fi
  rm -f "$log"
  return $status
}

# A folder that meson set up completely has both; an interrupted or failed setup leaves one or
# neither, and every later ninja would stop at "loading 'build.ninja'".
build_is_configured() {
  [ -f "$1/build.ninja" ] && [ -f "$1/meson-private/coredata.dat" ]
}

setup_build() {
  local dir=$1 status
  shift
  if [ -e "$dir" ] && ! build_is_configured "$dir"; then
    if [ -d "$dir/meson-private" ] || [ -d "$dir/meson-logs" ] || [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
      echo "$frontdoor_name: $dir was left half-configured by an earlier setup; setting it up again"
      rm -rf "$dir"
    else
      echo "$frontdoor_name: $dir exists and is not a meson build folder; move it away and run again" >&2
      return 2
    fi
  fi
  if [ -d "$dir" ]; then
    step "meson setup --reconfigure $dir" meson setup --reconfigure "$dir" "$@"
  else
    step "meson setup $dir" meson setup "$dir" "$@"
  fi
  status=$?
  if [ $status -ne 0 ] && [ -f "$dir/meson-logs/meson-log.txt" ]; then
    echo "$frontdoor_name: the end of $dir/meson-logs/meson-log.txt:" >&2
    tail -n 25 "$dir/meson-logs/meson-log.txt" | sed 's/^/  | /' >&2
  fi
  return $status
}
