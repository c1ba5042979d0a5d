"""meta.git server-side hooks' entry point: ``python -m controller.hook KIND --state-dir S ...``.

Installed by ``MetaRepo.install_hooks`` as small shell scripts that exec this
module with ``KIND`` = ``pre-receive`` or ``post-receive``. It imports only the
module that hook needs (``controller.hooks``): the pre-receive check
(``controller.hooks.pre_receive``: all-or-nothing refusal of forged or
rewritten refs) or the poke (``controller.hooks.post_receive``: ``POST /poke``
on host.sock with the operator key). Both run inside every ``git push``, so
neither loads pygit2, jsonschema or argparse unless it has to (see
docs/approvals.md "Hooks").
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

KINDS = ("pre-receive", "post-receive")
USAGE = "usage: python -m controller.hook pre-receive|post-receive --state-dir S --run-dir R"


def parse_args(argv: Sequence[str]) -> tuple[str, Path, Path]:
    """``(kind, state dir, run dir)`` from the hook's argv; raises ``ValueError`` naming
    what is wrong.

    Hand-parsed (argparse alone costs more than the poke): the installed script
    always passes exactly these arguments. Paths, not a ``controller.paths.Layout``:
    the pre-receive check needs only meta.git, and ``Layout`` (a dataclass) would
    import ``dataclasses`` and ``inspect`` into every push.
    """
    kind: str | None = None
    opts: dict[str, str] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name in ("--state-dir", "--run-dir"):
            if not eq:
                if not args:
                    raise ValueError(f"{name} needs a value")
                value = args.pop(0)
            opts[name] = value
        elif arg in KINDS and kind is None:
            kind = arg
        else:
            raise ValueError(f"unexpected argument {arg!r}")
    if kind is None:
        raise ValueError("the hook kind (pre-receive or post-receive) is missing")
    for name in ("--state-dir", "--run-dir"):
        if not opts.get(name):
            raise ValueError(f"{name} is required")
    return kind, Path(opts["--state-dir"]), Path(opts["--run-dir"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the hook named by ``argv``; its exit code (pre-receive: non-zero refuses the push)."""
    try:
        kind, state, run = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"{USAGE}\ncontroller.hook: {exc}", file=sys.stderr)
        return 2
    if kind == "pre-receive":
        from controller.hooks.pre_receive import pre_receive

        return pre_receive(state / "meta.git", sys.stdin, sys.stderr)  # Layout.meta_git
    from controller.hooks.post_receive import post_receive
    from controller.paths import Layout

    return post_receive(Layout(state, run), sys.stdin, sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
