#!/usr/bin/env bash
# hh — bootstrap hyperhive into ./.venv (from requirements.lock) and run it.
#   ./hh serve [args]   run the controller (any `hyperhive` verb works: ./hh status, ./hh pending, ...)
#   ./hh VERB --help    help on a verb; ./hh help-verbs lists every verb
#   ./hh test [args]    install the test tools (npm: claude CLI, playwright-core) and run pytest
#   ./hh agent [args]   run `hyperhive-agent`
#   ./hh                this help (it never starts the controller by itself)
# end of help
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
venv="$root/.venv"
stamp="$venv/.hh-installed"

need() { command -v "$1" >/dev/null 2>&1 || { echo "hh: '$1' not found — $2" >&2; exit 127; }; }

ensure_venv() {
  if [[ ! -x "$venv/bin/python" ]]; then
    need python3 "install Python 3.11+ (Debian: apt install python3 python3-venv)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
      || { echo "hh: Python 3.11+ is required, found $(python3 --version)" >&2; exit 1; }
    python3 -m venv "$venv" 2>/dev/null \
      || { echo "hh: 'python3 -m venv' failed — Debian: apt install python3-venv" >&2; exit 1; }
  fi
  if [[ ! -f "$stamp" || "$root/requirements.lock" -nt "$stamp" || "$root/pyproject.toml" -nt "$stamp" ]]; then
    echo "hh: installing Python dependencies from requirements.lock into .venv" >&2
    # some machines' pip config names local indexes that may be absent: drop those warnings only
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/requirements.lock" \
      2> >(grep -v "^WARNING: Location '" >&2)
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps -e "$root" \
      2> >(grep -v "^WARNING: Location '" >&2)
    touch "$stamp"
  fi
}

ensure_node() {
  local nstamp="$root/node_modules/.hh-installed"
  if [[ ! -f "$nstamp" || "$root/package-lock.json" -nt "$nstamp" ]]; then
    need npm "install Node.js 20+ and npm (Debian: apt install nodejs npm)"
    echo "hh: installing node test tools (claude CLI, playwright-core) into node_modules" >&2
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$nstamp"
  fi
}

usage() { sed -n '2,/^# end of help$/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

cmd="${1:-help}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
  test)
    ensure_venv
    ensure_node
    export PATH="$venv/bin:$PATH"
    export HYPERHIVE_CLAUDE_BIN="${HYPERHIVE_CLAUDE_BIN:-$root/node_modules/.bin/claude}"
    cd "$root"
    exec "$venv/bin/python" -m pytest "$@"
    ;;
  agent)
    ensure_venv
    exec "$venv/bin/hyperhive-agent" "$@"
    ;;
  -h|--help|help)
    usage
    ;;
  help-verbs)
    ensure_venv
    exec "$venv/bin/hyperhive" --help
    ;;
  *)
    ensure_venv
    exec "$venv/bin/hyperhive" "$cmd" "$@"
    ;;
esac
