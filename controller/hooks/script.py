"""The shell scripts installed as meta.git's ``hooks/pre-receive`` and ``hooks/post-receive``.

Both run ``python -m controller.hook KIND`` (this tree on ``PYTHONPATH``), with one
shortcut each, so the common approval push starts no Python interpreter at all.

pre-receive accepts by itself only the plainest decision: a push of exactly one line,
by the operator (``HYPERHIVE_PUSHER`` unset or ``operator``), creating
``refs/tags/approved/<id>`` or ``refs/tags/denied/<id>`` (``<id>`` a positive decimal
without leading zeros, at most 18 digits) while none of the id's other tags (the other
decision, ``building``, ``deployed``, ``failed``) exists and ``proposal/<id>`` is a
lightweight tag of a commit — one ``git for-each-ref`` over the id's six tags must print
exactly ``refs/tags/proposal/<id> <commit> commit`` — and the pushed object is that
commit, or (an annotated decision) peels to it (``git rev-parse --verify
<new>^{commit}`` in the hook's environment, which sees receive-pack's quarantined
objects). That is the case ``controller.hooks.pre_receive`` accepts with no further
check; anything else — several lines, another ref, a malformed line, any doubt — goes
to the Python check, which accepts or refuses with its reasons (so a refusal always
comes from there). The script exits non-zero when that Python cannot run: the push is
refused, never waved through.

In post-receive: while the controller's ref watch is on
(``controller.refwatch``, which writes the controller's pid to ``WATCH_MARKER`` in the
run dir and removes it when the watch stops), a push of decision tags only
(``approved/<id>``, ``denied/<id>``) has already started the pass by the time
post-receive runs — the watch saw git rename the ref into place — so the script prints
the poke's message itself and starts no interpreter (~50 ms of CPU, on the same cores as
the agent the pass is starting). Everything else — main, the manager's refs, a mixed
push, no marker, a marker whose pid is gone or not signalable by the pusher — goes to
the Python poke as before. The script reads the ref lines with shell built-ins only; ref
names are printed with ``printf %s`` (git refuses spaces and control characters in
them, and an expanded variable is never expanded again).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import controller
from controller.paths import Layout

WATCH_MARKER = "ref-watch.pid"
"""File in the run dir holding the controller's pid while its ref watch is on."""
KINDS = ("pre-receive", "post-receive")

_FAST_DECISION = """\
# the plainest decision is judged here, without Python (controller.hooks.script):
# one line creating approved/<id> or denied/<id> on (or peeling to) proposal/<id>'s
# commit, with no other tag of that id; everything else goes to controller.hook below
input=
n=0
while IFS= read -r line || [ -n "$line" ]; do
  input="$input$line
"
  n=$((n + 1))
done
if [ "$n" = 1 ] && [ "${{HYPERHIVE_PUSHER:-operator}}" = operator ]; then
  set -f
  set -- $input
  set +f
  kind=
  if [ "$#" = 3 ]; then
    old=$1 new=$2 ref=$3
    case "$ref" in
      refs/tags/approved/*) kind=approved id=${{ref#refs/tags/approved/}} ;;
      refs/tags/denied/*) kind=denied id=${{ref#refs/tags/denied/}} ;;
    esac
    case "$id" in
      ''|0*|*[!0-9]*) kind= ;;
    esac
    [ "${{#id}}" -le 18 ] || kind=
    case "$old" in
      *[!0]*) kind= ;;
    esac
    case "$new" in
      *[!0-9a-f]*) kind= ;;
    esac
    case "$new" in
      *[!0]*) ;;
      *) kind= ;;
    esac
    if [ "${{#old}}" != 40 ] && [ "${{#old}}" != 64 ]; then kind=; fi
    [ "${{#new}}" = "${{#old}}" ] || kind=
  fi
  if [ -n "$kind" ]; then
    t=refs/tags
    found=$(git --git-dir={git_dir} for-each-ref \\
      --format='%(refname) %(objectname) %(objecttype)' -- "$t/proposal/$id" \\
      "$t/approved/$id" "$t/denied/$id" "$t/building/$id" "$t/deployed/$id" "$t/failed/$id" \\
      2>/dev/null) || found=
    want=${{found#"$t/proposal/$id "}}
    want=${{want%" commit"}}
    case "$want" in
      *[!0-9a-f]*) want= ;;
    esac
    if [ "$found" != "$t/proposal/$id $want commit" ] || [ "${{#want}}" != "${{#new}}" ]; then
      want=
    fi
    if [ -n "$want" ] && [ "$want" = "$new" ]; then
      exit 0
    fi
    if [ -n "$want" ]; then
      # an annotated decision: the pushed tag object (in receive-pack's quarantine, which
      # this environment points git at) must peel to the proposal's commit
      peeled=$(git --git-dir={git_dir} rev-parse --verify --quiet "$new^{{commit}}" \\
        2>/dev/null) || peeled=
      if [ "$peeled" = "$want" ]; then
        exit 0
      fi
    fi
  fi
fi
printf '%s' "$input" | {command}
"""

_SKIP_POKE = """\
# a push of decision tags only, while the controller's ref watch is on: the watch
# started the pass when git wrote the tag (controller.refwatch), no poke is needed
input=
while IFS= read -r line || [ -n "$line" ]; do
  input="$input$line
"
done
watch=
read -r watch 2>/dev/null < {marker}
case "$watch" in
  *[!0-9]*) watch= ;;
esac
if [ -n "$watch" ] && kill -0 "$watch" 2>/dev/null; then
  refs=
  only=yes
  while read -r old new ref; do
    [ -n "$ref" ] || continue
    case "$ref" in
      refs/tags/approved/?*|refs/tags/denied/?*) refs="$refs${{refs:+, }}${{ref#refs/tags/}}" ;;
      *) only=no ;;
    esac
  done <<EOF
$input
EOF
  if [ "$only" = yes ] && [ -n "$refs" ]; then
    printf 'hyperhive: received %s; the controller is reconciling (git fetch --tags to see \
deployed/<id> or failed/<id>)\\n' "$refs" >&2
    exit 0
  fi
fi
printf '%s' "$input" | {command}
exit 0
"""


def watch_marker(layout: Layout) -> Path:
    """``<run>/ref-watch.pid``: the controller's pid while its ref watch is on."""
    return layout.run / WATCH_MARKER


def hook_script(layout: Layout, kind: str, python: str = sys.executable) -> str:
    """The shell script installed as ``hooks/<kind>`` (``pre-receive`` / ``post-receive``)
    of ``layout``'s meta.git, running this tree's ``controller.hook`` with ``python``."""
    if kind not in KINDS:
        raise ValueError(f"not a hook kind: {kind!r}")
    root = Path(controller.__file__).resolve().parent.parent
    command = (
        f"{shlex.quote(python)} -m controller.hook {kind}"
        f" --state-dir {shlex.quote(str(layout.state))}"
        f" --run-dir {shlex.quote(str(layout.run))}"
    )
    head = (
        "#!/bin/sh\n"
        f"# hyperhive meta.git {kind} hook: written by the controller at every start;\n"
        "# local edits are overwritten. See docs/approvals.md.\n"
        f"PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        "export PYTHONPATH\n"
    )
    if kind == "pre-receive":
        git_dir = shlex.quote(str(layout.meta_git))
        return head + _FAST_DECISION.format(git_dir=git_dir, command=command)
    marker = shlex.quote(str(watch_marker(layout)))
    return head + _SKIP_POKE.format(marker=marker, command=command)
