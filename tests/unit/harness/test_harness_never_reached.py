"""``RunResult.never_reached_model``: which failed claude runs leave their message unspent."""

from __future__ import annotations

from collections import Counter

import pytest

from harness.stream import Result, Usage
from harness.turn import RunResult


def _result(text: str, status: int | None, is_error: bool = True) -> Result:
    return Result(
        subtype="success" if not is_error else "error_during_execution",
        is_error=is_error,
        terminal_reason=None,
        session_id="s1",
        usage=Usage(),
        cost_usd=0.0,
        duration_ms=10,
        num_turns=1,
        text=text,
        api_error_status=status,
    )


def _run(
    result: Result | None = None,
    *,
    exit_code: int | None = 1,
    error: str | None = None,
    session_id: str | None = "s1",
    usage: Usage | None = None,
    tools: Counter[str] | None = None,
    cancelled: bool = False,
) -> RunResult:
    return RunResult(
        exit_code, result, [], tools or Counter(), usage, session_id, cancelled, 0.0, None, 1.0,
        error=error,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        (_run(exit_code=None, error="cannot start claude: [Errno 2]", session_id=None),
         "claude_missing"),
        (_run(exit_code=1, session_id=None), "claude_exited"),
        (_run(_result("API Error: 401 invalid x-api-key", 401)), "unauthorized"),
        (_run(_result("Invalid API key · Please run /login", None)), "unauthorized"),
        (_run(_result("API Error: 529 Overloaded", 529)), "api_unavailable"),
        (_run(_result("API Error: 503", 503)), "api_unavailable"),
        (_run(_result("API Error: Connection error.", None)), "api_unavailable"),
        # the message was spent: the model answered, the run succeeded, was cut, or a 500
        (_run(_result("API Error: 529", 529), usage=Usage(input_tokens=5)), None),
        (_run(_result("API Error: 529", 529), tools=Counter({"Bash": 1})), None),
        (_run(_result("API Error: 500 boom", 500)), None),
        (_run(_result("done", None, is_error=False), exit_code=0), None),
        (_run(exit_code=None, error="cannot start claude", session_id=None, cancelled=True), None),
        (_run(exit_code=1, session_id="s1"), None),
    ],
)  # fmt: skip
def test_never_reached_model(run: RunResult, reason: str | None) -> None:
    assert run.never_reached_model() == reason
