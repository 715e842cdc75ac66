# Sourced by the front-door scripts: need_packages PKG... installs the Debian packages that are
# missing, with apt-get when run as root; otherwise prints the command to run and returns 2.
need_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null && return 0
    echo "apt-get install failed"
    return 2
  fi
  echo "missing packages; install them with:"
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}"
  return 2
}
