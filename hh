#!/usr/bin/env bash
# hh — bootstrap hyperhive into ./.venv (from requirements.lock) and run it.
#   ./hh serve [args]   run the controller; gives its agents the pinned claude CLI (installed
#                       from npm on first use, like ./hh test) unless HYPERHIVE_CLAUDE_BIN is set
#                       (any `hyperhive` verb works: ./hh status, ./hh pending, ...)
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

nstamp="$root/node_modules/.hh-installed"
node_fresh() { [[ -f "$nstamp" && ! "$root/package-lock.json" -nt "$nstamp" ]]; }

ensure_node() {
  if ! node_fresh; then
    need npm "install Node.js 20+ and npm (Debian: apt install nodejs npm)"
    echo "hh: installing the pinned claude CLI and playwright-core into node_modules" >&2
    (cd "$root" && npm ci --no-audit --no-fund --loglevel=error)
    touch "$nstamp"
  fi
}

# agents run claude: HYPERHIVE_CLAUDE_BIN if the operator set it, else the pinned CLI from
# package-lock.json (installed here when npm exists), else a claude on PATH; with none,
# serve still runs and every agent reports ClaudeMissing (hyperhive status says how to fix it)
ensure_claude() {
  [[ -n "${HYPERHIVE_CLAUDE_BIN:-}" ]] && return 0
  local pinned="$root/node_modules/.bin/claude"
  if ! node_fresh || [[ ! -x "$pinned" ]]; then
    if command -v npm >/dev/null 2>&1; then
      echo "hh: installing the pinned claude CLI (and playwright-core) into node_modules" >&2
      if (cd "$root" && npm ci --no-audit --no-fund --loglevel=error); then
        touch "$nstamp"
      else
        echo "hh: npm ci failed; agents use a claude on PATH if there is one" >&2
      fi
    fi
  fi
  if [[ -x "$pinned" ]]; then
    export HYPERHIVE_CLAUDE_BIN="$pinned"
  elif ! command -v claude >/dev/null 2>&1; then
    echo "hh: no claude CLI: agents will report ClaudeMissing. Install Node.js 20+ and npm" \
      "(Debian: apt install nodejs npm) and run ./hh serve again, or put claude on PATH" >&2
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
  serve)
    ensure_venv
    ensure_claude
    exec "$venv/bin/hyperhive" serve "$@"
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
