"""harness.plugins with a scripted command runner (the real CLI is exercised in the
integration test with a local marketplace)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from harness.plugins import (
    Completed,
    Outcome,
    failure_report,
    install_all,
    marketplace_known,
    plugin_installed,
)


class Script:
    """Answers per argv tail; records every call."""

    def __init__(self, answers: dict[str, Completed]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    def __call__(
        self, argv: list[str], env: Mapping[str, str], cwd: Path, timeout: float
    ) -> Completed:
        tail = " ".join(argv[1:])
        self.calls.append(argv[1:])
        return self.answers.get(tail, Completed(0, "", ""))


def test_marketplaces_first_then_plugins_and_failures_collected(tmp_path: Path) -> None:
    run = Script(
        {
            "plugin marketplace list --json": Completed(0, "[]", ""),
            "plugin marketplace add /m": Completed(0, "✔ Successfully added marketplace: m", ""),
            "plugin marketplace add gone/repo": Completed(
                1, "Adding marketplace…", "✘ Failed to add marketplace: clone failed"
            ),
            "plugin list --json": Completed(0, json.dumps([{"id": "old@m"}]), ""),
            "plugin install new@m": Completed(0, "✔ Successfully installed plugin: new@m", ""),
            "plugin install twice@m": Completed(1, "", 'Plugin "twice@m" is already installed'),
            "plugin install nope@m": Completed(1, "Installing…", '✘ Plugin "nope" not found'),
        }
    )
    seen: list[Outcome] = []
    out = install_all(
        "claude", {}, tmp_path, ["/m", "gone/repo"], ["old", "new@m", "twice@m", "nope@m"],
        run=run, on_outcome=seen.append,
    )  # fmt: skip
    assert out == seen
    assert [(o.spec, o.ok, o.action) for o in out] == [
        ("/m", True, "added"),
        ("gone/repo", False, "failed"),
        ("old", True, "present"),  # in plugin list: not installed again
        ("new@m", True, "installed"),
        ("twice@m", True, "present"),  # "already" counts as success
        ("nope@m", False, "failed"),
    ]
    assert "clone failed" in out[1].detail and "not found" in out[5].detail
    assert ["plugin", "install", "old"] not in run.calls
    assert run.calls.index(["plugin", "marketplace", "add", "/m"]) < run.calls.index(
        ["plugin", "list", "--json"]
    )
    report = failure_report("alice", [o for o in out if not o.ok])
    assert report.startswith("[hyperhive] agent alice: 2 of its configured")
    assert "gone/repo" in report and "nope@m" in report


def test_nothing_configured_runs_nothing(tmp_path: Path) -> None:
    run = Script({})
    assert install_all("claude", {}, tmp_path, [], [], run=run) == []
    assert run.calls == []


def test_a_known_marketplace_is_not_added_again(tmp_path: Path) -> None:
    known = [{"name": "hh-test", "source": "directory", "path": str(tmp_path / "mkt")}]
    run = Script({"plugin marketplace list --json": Completed(0, json.dumps(known), "")})
    (o,) = install_all("claude", {}, tmp_path, [str(tmp_path / "mkt") + "/"], [], run=run)
    assert o.ok and o.action == "present"
    assert run.calls == [["plugin", "marketplace", "list", "--json"]]


def test_a_cli_that_cannot_run_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    (m,) = install_all("/nonexistent/claude", {"PATH": "/usr/bin"}, tmp_path, ["/m"], [])
    assert not m.ok and "cannot run" in m.detail


def test_matching_helpers() -> None:
    assert plugin_installed("x", [{"id": "x@m"}]) and plugin_installed("x@m", [{"id": "x@m"}])
    assert not plugin_installed("x@other", [{"id": "x@m"}])
    assert not plugin_installed("x", [{"id": 3}, {}])
    assert marketplace_known("owner/repo", [{"name": "r", "repo": "owner/repo"}])
    assert marketplace_known("https://e/x.git", [{"url": "https://e/x.git"}])
    assert not marketplace_known("owner/other", [{"name": "r", "repo": "owner/repo"}])
