"""Custom front-ends on the dashboard: files from the meta repo at main, sandboxed, behind a
capability; a refused overwrite of a built-in file (push hook, with the reason)."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.auth import LoginTokens
from controller.config import Config
from controller.dashboard import make_dashboard_app
from controller.dashboard.custom import FILES_CSP
from controller.frontend.files import FrontendFiles
from controller.metarepo import MetaRepo
from controller.paths import Layout
from tests.e2e.browser import Browser
from tests.frontend.bundle import push_bundles, try_overwrite, try_overwrite_commit
from tests.gitutil import git

ROOT = Path(__file__).resolve().parents[2]


def fakes() -> Any:
    path = str(ROOT / "tests" / "component")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("dashboard_fakes")


@pytest.fixture
def meta(tmp_path: Path) -> MetaRepo:
    layout = Layout(tmp_path / "state", tmp_path / "run")
    meta = MetaRepo.open_or_init(layout, Config(default_model="haiku"))
    work = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(work))
    push_bundles(work)
    return meta


@pytest.fixture
def dash(tmp_path: Path, meta: MetaRepo) -> Iterator[tuple[Browser, Any, LoginTokens]]:
    f = fakes()
    ops, broker = f.demo()
    tokens = LoginTokens()
    app = make_dashboard_app(
        ops, broker, operator_key="custom-ui-test-key", login_tokens=tokens,
        web_sock=lambda name: tmp_path / f"{name}.sock",
        frontend=FrontendFiles(meta.path, meta.desired),
    )  # fmt: skip
    with f.serve(app) as base:
        yield Browser(int(base.rsplit(":", 1)[1])), ops, tokens


def login(b: Browser, tokens: LoginTokens) -> None:
    first, _ = b.open_login(f"{b.origin}/login?token={tokens.issue().token}")
    assert first.status == 303


def test_extra_files_behind_a_capability_and_sandboxed(
    dash: tuple[Browser, Any, LoginTokens],
) -> None:
    b, _, tokens = dash
    assert b.get("/agents/alice/game/").status == 401  # the entry needs the session
    login(b, tokens)
    entry = b.get("/agents/alice/game")
    assert entry.status == 303
    loc = entry.header("Location")
    m = re.fullmatch(r"/agents/alice/files/([0-9]+\.[0-9a-f]{32})/game/", loc)
    assert m, loc
    cap = m[1]
    anon = Browser(b.port)  # a sandboxed document sends no cookie: the capability is enough
    page = anon.get(loc)
    assert page.status == 200
    assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert page.header("Content-Security-Policy") == FILES_CSP
    assert page.header("Content-Security-Policy").startswith("sandbox allow-scripts")
    assert "allow-same-origin" not in page.header("Content-Security-Policy")
    assert page.header("Referrer-Policy") == "no-referrer"
    assert b"game.js" in page.body
    js = anon.get(f"/agents/alice/files/{cap}/game/game.js")
    assert (js.status, js.header("Content-Type")) == (200, "text/javascript; charset=utf-8")
    assert anon.get(f"/agents/alice/files/{cap}/game/logo.svg").header("Content-Type") == (
        "image/svg+xml"
    )
    # a capability is for one agent, and cannot be forged or walked out of
    assert anon.get(f"/agents/bob/files/{cap}/ui/").status == 404
    forged = cap[:-1] + ("0" if cap[-1] != "0" else "1")
    assert anon.get(f"/agents/alice/files/{forged}/game/").status == 404
    assert anon.get(f"/agents/alice/files/{cap}/game/../agent.yaml").status == 404
    assert anon.get(f"/agents/alice/files/{cap}/game/%2e%2e/agent.yaml").status == 404
    assert anon.get(f"/agents/alice/files/{cap}/nothing/").status == 404
    # nothing else opens up without the session
    assert anon.get("/agents/alice/").status == 401
    assert anon.get("/agents/alice/api/state").status == 401
    # the built-in UI is still the built-in one
    builtin = b.get("/agents/alice/")
    assert builtin.status == 200 and b"app.js" in builtin.body
    assert b.get("/agents/alice/elsewhere/").status == 404


def test_dist_replaces_the_page_with_the_shell(dash: tuple[Browser, Any, LoginTokens]) -> None:
    b, _, tokens = dash
    login(b, tokens)
    shell = b.get("/agents/bob/")
    assert shell.status == 200
    text = shell.text
    m = re.search(r'src="files/([0-9]+\.[0-9a-f]{32})/ui/"', text)
    assert m, text
    assert 'sandbox="allow-scripts allow-forms allow-popups allow-modals allow-downloads"' in text
    assert '<script src="/static/agent-bridge.js"></script>' in text
    assert "frame-src 'self'" in shell.header("Content-Security-Policy")
    ui = Browser(b.port).get(f"/agents/bob/files/{m[1]}/ui/")
    assert ui.status == 200 and b"bob's own UI" in ui.body
    assert b.get("/static/agent-bridge.js").status == 200


def test_overwriting_a_builtin_file_is_refused_at_push(tmp_path: Path, meta: MetaRepo) -> None:
    work = tmp_path / "op"
    git("pull", "-q", cwd=work, check=False)
    res = try_overwrite(work)
    assert res.returncode != 0
    assert "pre-receive hook declined" in res.stderr
    assert "spec.frontend.extraFiles.evil.target" in res.stderr
    assert "would overwrite a built-in file of the agent UI" in res.stderr


def test_overwriting_a_builtin_file_is_refused_as_a_proposal(
    tmp_path: Path, meta: MetaRepo
) -> None:
    """The manager proposes the same change from its clone: refused with the field and reason."""
    from controller.errors import Invalid

    clone = tmp_path / "mgr"
    git("clone", "-q", str(meta.path), str(clone))
    res = try_overwrite_commit(clone)
    with pytest.raises(Invalid) as err:
        meta.propose_commit(res, source=clone)
    assert "spec.frontend.extraFiles.evil.target" in str(err.value)
    assert "would overwrite a built-in file" in str(err.value)
