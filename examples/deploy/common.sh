# Shared by the deploy scripts: everything happens under $DEPLOY_ROOT (a temporary directory the
# quickstart creates; /tmp/stagecoach-deploy when unset).
set -eu
root=${DEPLOY_ROOT:-/tmp/stagecoach-deploy}
mkdir -p "$root/releases" "$root/slots" "$root/db"
# A stage's output: a JSON object written to $SC_OUTPUT is merged into the task's context.
output() { [ -n "${SC_OUTPUT:-}" ] && printf '%s\n' "$1" >"$SC_OUTPUT"; return 0; }
