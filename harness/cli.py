"""``hyperhive-agent``: the in-container agent's command line (serve / mcp / wake)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Sequence

from harness.credential import (
    BrokerTarget,
    CredentialError,
    broker_client,
    broker_target,
    load_credential,
)

ENV_HELP = """environment:
  HYPERHIVE_AGENT        the agent's logical name (alice, manager)
  HYPERHIVE_FLAVOR       agent | manager (the manager gets the privileged MCP tools)
  HYPERHIVE_SOCKET       the agent's API socket (default /run/hive/mcp.sock)
  HYPERHIVE_API_URL      the agent API on TCP (http(s)://host:port), instead of the socket
  HYPERHIVE_API_CA       CA bundle for an https HYPERHIVE_API_URL (default: system CAs)
  HYPERHIVE_CREDENTIAL_FILE  the agent's broker credential, sent as a bearer on every
                         socket request (default /etc/hyperhive/credential)
  HYPERHIVE_META_DIR     the manager's meta clone
  HYPERHIVE_META_URL     meta.git over HTTP (manager in a pod): the clone's origin; its
                         commits are pushed to refs/hyperhive/manager/* to be proposed
  HYPERHIVE_STATE_DIR    durable state dir, claude's fixed cwd (default: the cwd)
  HYPERHIVE_SETTINGS     settings.json rendered from the agent manifest
  HYPERHIVE_WEB_SOCKET   the web UI's unix socket (default: web.sock beside HYPERHIVE_SOCKET)
  HYPERHIVE_WEB_TCP      1 = also serve the web UI on TCP (every request needs
                         Authorization: Bearer <credential>; default 0)
  HYPERHIVE_WEB_HOST     TCP bind host (default 127.0.0.1)
  HYPERHIVE_WEB_PORT     TCP port (default: settings web_port; only with HYPERHIVE_WEB_TCP=1)
  HYPERHIVE_WEB_ALLOWED_HOSTS  extra Host names the TCP listener answers (comma-separated)
  CLAUDE_CONFIG_DIR      claude credentials + sessions (default ~/.claude)
  HYPERHIVE_CLAUDE_BIN   the claude executable (default: claude on PATH)
  HYPERHIVE_LOG_LEVEL    DEBUG | INFO | WARNING (default INFO; WARNING for mcp)
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hyperhive-agent",
        description="The hyperhive in-container agent: a turn loop around the claude CLI, "
        "its MCP server, and a per-agent web UI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "serve",
        help="run the turn loop and the agent web UI (what systemd / the local driver starts)",
        description="Long-poll the agent's inbox; for each message run one `claude -p` turn with a "
        "wake prompt, stream its events into the event log (sqlite + the web UI's live tail), "
        "ack the message and record a turn-stats row. Compacts and retries once when the context "
        "is full. Serves the agent web UI on HYPERHIVE_WEB_SOCKET (and on TCP with "
        "HYPERHIVE_WEB_TCP=1). SIGTERM cancels the running turn and exits 0; a missing "
        "credential file exits 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    sub.add_parser(
        "mcp",
        help="run the stdio MCP server claude launches (server key 'hyperhive')",
        description="Speak MCP over stdin/stdout: the tools mcp__hyperhive__send, recv, ask, "
        "answer, remind, recent, status (plus request_spawn, request_apply_commit, start, kill, "
        "restart, update, ask_operator, list for HYPERHIVE_FLAVOR=manager), each a call on "
        "HYPERHIVE_SOCKET. `serve` normally serves these tools itself (loopback HTTP, a "
        "credential per claude run); claude starts this stdio server only when that endpoint "
        "could not be opened. Exits at once on SIGINT / SIGTERM or EOF.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=ENV_HELP,
    )
    w = sub.add_parser(
        "wake",
        help="drop a message into this agent's own inbox (wakes the turn loop)",
        description="POST /wake on HYPERHIVE_SOCKET: a message from LABEL lands in the agent's own "
        "inbox and starts a turn. For local tools (an MCP server that got a chat message, a "
        "webhook, a cron job). Prints the message id. Exit codes: 0 delivered, 1 refused "
        "(the server's reason on stderr), 2 usage error or no readable credential file, "
        "3 socket unreachable.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  hyperhive-agent wake --from 'matrix: new dm' --body 'alice: are you there?'\n"
        "  some-command | hyperhive-agent wake --from cron --body -\n\n" + ENV_HELP,
    )
    w.add_argument(
        "--from",
        dest="label",
        required=True,
        metavar="LABEL",
        help="who or what wakes the agent (shown as the sender, 1-128 characters)",
    )
    w.add_argument(
        "--body", required=True, metavar="TEXT", help="the message text; '-' reads it from stdin"
    )
    w.add_argument("--socket", default=None, help="override HYPERHIVE_SOCKET")
    w.add_argument("--json", action="store_true", help="print the server's JSON response")
    return p


def wake(
    label: str, body: str, socket: str | BrokerTarget, token: str | None, as_json: bool = False
) -> int:
    """POST /wake with ``token`` as the bearer; print the result.

    Returns the exit code (0 / 1 / 2 / 3)."""
    from schemas.client import ApiError, Unreachable  # not on `serve`'s start path

    if body == "-":
        body = sys.stdin.read()
    if not body.strip():
        print("hyperhive-agent wake: the body is empty", file=sys.stderr)
        return 2
    try:
        data = broker_client(socket, token).post(
            "/wake",
            {"from": label, "body": body, "idempotency_key": uuid.uuid4().hex},
            timeout=15.0,
            retry=True,
        )
    except ApiError as exc:
        where = f" ({exc.field})" if exc.field else ""
        print(f"hyperhive-agent wake: refused{where}: {exc.message}", file=sys.stderr)
        return 1
    except Unreachable as exc:
        print(f"hyperhive-agent wake: {exc}", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps(data))
    else:
        print(f"woke the agent: message #{data.get('id') if isinstance(data, dict) else '?'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``hyperhive-agent`` and ``python -m harness``."""
    given = sys.argv[1:] if argv is None else list(argv)
    if given == ["serve"]:
        # the web UI answers "starting" while the rest is imported (harness.earlyweb);
        # python -m harness opened it already, hyperhive-agent serve opens it here
        from harness import earlyweb

        earlyweb.start(os.environ)
    args = _parser().parse_args(given)
    if args.command == "serve":
        from harness.serve import main as serve_main

        return serve_main()
    if args.command == "mcp":
        from harness.mcp_server import main as mcp_main

        return mcp_main()
    try:
        target = BrokerTarget(args.socket) if args.socket else broker_target(os.environ)
        token = load_credential(os.environ)
    except (CredentialError, ValueError) as exc:
        print(f"hyperhive-agent wake: {exc}", file=sys.stderr)
        return 2
    return wake(args.label, args.body, target, token, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
