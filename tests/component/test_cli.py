"""The ``hyperhive`` CLI run as a subprocess, as an operator runs it (issue 11, item 4).

Client-side checks need no controller: a bad name or id is refused in plain words with
exit 2 before any request (the state dir has no operator key, so a request would fail
differently). The rest runs against one real ``hyperhive serve`` (local runtime, a
stand-in agent that only sleeps).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import EPILOG
from tests import realserve

ROOT = realserve.ROOT


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli_argv(state: Path, *argv: str, run: Path | None = None) -> list[str]:
    """The argv of ``hyperhive --state-dir STATE [--run-dir RUN] ARGV``."""
    cmd = [sys.executable, "-m", "controller.cli", "--state-dir", str(state)]
    if run is not None:
        cmd += ["--run-dir", str(run)]
    return [*cmd, *argv]


def cli(
    state: Path, *argv: str, run: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``hyperhive --state-dir STATE [--run-dir RUN] ARGV`` with its output captured."""
    return subprocess.run(
        cli_argv(state, *argv, run=run),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_ARGS = [
    ("status", "a b"),
    ("status", "../status"),
    ("status", "Alice"),
    ("status", "alice?x=1"),
    ("status", "waytoolongname"),
    ("send", "a/b", "hi"),
    ("destroy", "al%2fice"),
    ("restart", "x y"),
    ("start", "-"),
    ("stop", "1abc"),
    ("purge", "alice-1/2"),
    ("stats", "bob\n"),
    ("approve", "abc"),
    ("approve", "0"),
    ("deny", "1/approve", "--note", "x"),
    ("approve", "99999999999999999999"),
    ("messages", "--limit", "0"),
    ("messages", "--limit", "1001"),
    ("messages", "--since", "-1"),
]


@pytest.mark.parametrize("argv", BAD_ARGS, ids=[" ".join(map(repr, a)) for a in BAD_ARGS])
def test_bad_names_and_ids_are_refused_before_any_request(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    r = cli(tmp_path / "state", *argv)
    assert r.returncode == 2, r
    last = r.stderr.strip().splitlines()[-1]
    assert "is not" in last or "is neither" in last, r.stderr
    assert "[a-z" not in r.stderr and "^" not in r.stderr  # no raw regex
    assert "Traceback" not in r.stderr
    assert "controller" not in last and "operator key" not in r.stderr  # no request was made
    assert not (tmp_path / "state").exists()


def test_reconcile_dry_run_never_creates_a_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "typo" / "state"
    r = cli(state, "reconcile", "--dry-run")
    assert r.returncode == 2, r
    assert "no state dir" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "typo").exists()


def test_reconcile_dry_run_writes_nothing_in_an_empty_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    r = cli(state, "reconcile", "--dry-run")
    assert r.returncode == 2, r
    assert "no meta.git" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(state.iterdir()) == []


def test_hh_help_is_clean_and_a_bare_hh_does_not_serve() -> None:
    for argv in (["--help"], []):
        r = subprocess.run(
            [str(ROOT / "hh"), *argv], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert r.returncode == 0, r
        assert "./hh serve" in r.stdout
        assert "set -" not in r.stdout and "end of help" not in r.stdout
        assert r.stdout.splitlines()[0].startswith("hh — ")


def test_readme_commands_run_as_written() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using it") :]
    section = section[: section.index("```", section.index("```sh") + 5)]
    lines = [ln for ln in section.splitlines() if ln and not ln.startswith(("#", "```"))]
    assert lines and all(ln.startswith("./hh ") for ln in lines), lines
    verbs = {shlex.split(ln, comments=True)[1] for ln in lines}
    r = cli(Path("/nonexistent"), "--help")
    for verb in verbs:
        assert f"    {verb} " in r.stdout or f"{{{verb}" in r.stdout or verb in r.stdout, verb


def test_the_denial_example_in_help_works_without_a_git_identity(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "EMAIL": "",
    }
    repo = tmp_path / "meta"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True, env=env)
    subprocess.run(
        [*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True, env=env
    )
    subprocess.run(["git", "tag", "proposal/2"], cwd=repo, check=True, env=env)
    example = EPILOG.replace("\\\n", " ")
    line = next(ln for ln in example.splitlines() if "denied/2" in ln)
    tag_cmd = line.split("&&")[0].strip()
    r = subprocess.run(tag_cmd, shell=True, cwd=repo, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    msg = subprocess.run(
        ["git", "tag", "-l", "--format=%(contents)", "denied/2"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert msg.stdout.strip() == "not now"


STANDIN = """\
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
while True:
    time.sleep(1)
"""


class Serve:
    """A real ``hyperhive serve`` whose agents are a sleeping stand-in."""

    def __init__(self, root: Path, dashboard_port: int = 0) -> None:
        self.state, self.run = root / "s", root / "r"
        script = root / "standin.py"
        script.write_text(STANDIN)
        base = realserve.free_block(10)
        config = realserve.write_config(
            root / "config.json",
            manager_port=base,
            agent_range=8,
            dashboard_port=dashboard_port,
            resync_seconds=60,
            local_start_grace_seconds=1,
        )
        self.log = root / "serve.log"
        env = realserve.standin_env(
            [sys.executable, str(script)], (*realserve.STANDIN_ENV_KEEP, "TMPDIR")
        )
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(
                realserve.serve_argv(self.state, config, run=self.run),
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=fh,
            )

    def cli(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return cli(self.state, *argv, run=self.run)

    def argv(self, *argv: str) -> list[str]:
        """The CLI's argv against this controller (for Popen and shells)."""
        return cli_argv(self.state, *argv, run=self.run)

    def close(self) -> None:
        realserve.stop(self.proc)
        realserve.kill_agents(self.state)


def test_a_dashboard_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        srv = Serve(tmp_path, dashboard_port=held.getsockname()[1])
        try:
            code = srv.proc.wait(60)
        finally:
            srv.close()
    err = srv.log.read_text()
    assert code == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln or " CRITICAL " in ln]
    assert len(errors) == 1, err
    assert "cannot serve the dashboard" in errors[0] and "--dashboard HOST:PORT" in errors[0]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    srv = Serve(tmp_path_factory.mktemp("serve"))
    try:
        realserve.wait_for(
            "the admin socket", lambda: srv.cli("status").returncode == 0, timeout=60, interval=0.3
        )
        yield srv
    finally:
        srv.close()


def test_messages_shows_the_newest_oldest_first(serve: Serve) -> None:
    for i in range(5):
        assert serve.cli("send", "manager", f"note {i}").returncode == 0
    r = serve.cli("messages", "--limit", "3", "-o", "json")
    assert r.returncode == 0, r.stderr
    newest = json.loads(r.stdout)
    assert [m["body"] for m in newest] == ["note 2", "note 3", "note 4"]
    text = serve.cli("messages", "--limit", "2").stdout.splitlines()
    assert "note 3" in text[0] and "note 4" in text[1]
    first = newest[0]["id"]
    after = json.loads(
        serve.cli("messages", "--since", str(first), "--limit", "1", "-o", "json").stdout
    )
    assert [m["body"] for m in after] == ["note 3"]


def test_messages_follow_prints_new_messages(serve: Serve) -> None:
    cmd = serve.argv("messages", "--limit", "1", "--follow")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the newest one
        assert serve.cli("send", "manager", "fresh one").returncode == 0
        line = proc.stdout.readline()
        assert "fresh one" in line
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize(
    "verb", [("status",), ("messages", "--limit", "5"), ("status", "-o", "json")]
)
def test_a_closed_pipe_is_no_traceback(serve: Serve, verb: tuple[str, ...]) -> None:
    cmd = serve.argv(*verb)
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the CLI writes a byte
    err = proc.stderr.read()
    code = proc.wait(60)
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) <= 1
    assert code == 141


def test_status_head_in_a_shell(serve: Serve) -> None:
    base = " ".join(shlex.quote(a) for a in serve.argv())
    r = subprocess.run(
        f"{base} status | head -1; {base} messages | head -1",
        shell=True,
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stdout.startswith("runtime ")


def test_a_name_with_a_space_is_refused_even_with_a_controller(serve: Serve) -> None:
    r = serve.cli("status", "a b")
    assert r.returncode == 2
    assert "not an agent name" in r.stderr and "no controller" not in r.stderr


def test_start_stop_restart_and_stop_all(serve: Serve) -> None:
    r = serve.cli("restart", "manager")
    assert r.returncode == 0 and r.stdout.startswith("manager: "), r
    r = serve.cli("stop", "manager")
    assert r.returncode == 0 and r.stdout.startswith("manager: "), r
    assert serve.cli("start", "manager").returncode == 0
    r = serve.cli("stop", "--all")
    assert r.returncode == 0 and "manager: " in r.stdout, r
    r = serve.cli("stop")
    assert r.returncode == 2 and "which agent" in r.stderr
    r = serve.cli("restart", "--all")
    assert r.returncode == 2
