"""``hyperhive budget``'s text table, from the report JSON (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from controller.stats import fmt_tokens


def _usd(v: Any) -> str:
    return "-" if v is None else f"${float(v):.4f}"


def _tokens(v: Any) -> str:
    return "-" if v is None else fmt_tokens(int(v))


def _row(s: dict[str, Any]) -> list[str]:
    frac = s.get("fraction")
    ext = ""
    if s.get("extensions"):
        ext = f"+{_usd(s.get('extension_usd'))}"
        if s.get("extension_tokens"):
            ext += f" +{_tokens(s.get('extension_tokens'))}"
    state = str(s.get("level"))
    if s.get("held"):
        state = "HELD"
    return [
        "(swarm)" if s.get("scope") == "swarm" else str(s.get("agent")),
        str(s.get("turns", 0)),
        _usd(s.get("spent_usd")),
        _usd(s.get("limit_usd")),
        _tokens(s.get("spent_tokens")),
        _tokens(s.get("limit_tokens")),
        "-" if frac is None else f"{float(frac) * 100:.0f}%",
        ext or "-",
        state,
    ]


def render_budget(report: dict[str, Any]) -> str:
    """A table: one line per agent (and ``(swarm)``) with turns, spend, limits, the used
    fraction, extensions and the state; then the window, and why each held agent is held.
    Limits include the window's extensions."""
    end = datetime.fromtimestamp(float(report["window_end"]), UTC)
    head = ["AGENT", "TURNS", "SPENT", "LIMIT", "TOKENS", "TOKEN-LIMIT", "USED", "EXTENDED",
            "STATE"]  # fmt: skip
    rows = [head] + [_row(s) for s in report.get("agents", [])]
    if report.get("swarm"):
        rows.append(_row(report["swarm"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    left = max(0, int(float(report["window_end"]) - float(report["now"])))
    lines.append(
        f"window: UTC day {report['window']}, ends {end:%Y-%m-%dT%H:%M:%SZ} "
        f"(in {left // 3600}h{left % 3600 // 60:02d}m)"
    )
    for s in report.get("agents", []):
        if s.get("held"):
            lines.append(f"{s['agent']} is held: {s['held']}")
    return "\n".join(lines) + "\n"
