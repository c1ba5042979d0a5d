"""Custom agent front-ends in real headless Chromium (playwright-core driven from node).

A real meta repo holds two bundles pushed through the real hooks (tests/frontend/bundle.py):
alice's ``extraFiles`` game and bob's ``frontend.dist`` UI. The dashboard (over the demo
fakes, bob's agent UI a stand-in on a unix socket) serves them from the meta repo at main.
``tests/browser/custom_frontend.mjs`` logs in and opens both:

- alice's built-in UI links to her game (``extra_files`` in her ``api/state``); the game
  runs its script and loads its image from ``/agents/alice/files/<cap>/game/``,
  in an opaque origin: no cookie, no storage, the dashboard's API refused;
- bob's UI is framed by the controller's shell, sandboxed; through the bridge it reads his
  ``api/state``, posts ``api/send`` (which reaches his socket without the operator's
  cookie) and receives his event stream; it cannot reach the shell's document.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.auth import LoginTokens
from controller.config import Config
from controller.dashboard import make_dashboard_app
from controller.frontend.files import FrontendFiles
from controller.metarepo import MetaRepo
from controller.paths import Layout
from tests import chromium
from tests.frontend.bundle import push_bundles
from tests.gitutil import git

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("custom_frontend.mjs")

pytestmark = pytest.mark.browser


def _fakes() -> Any:
    path = str(ROOT / "tests" / "component")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module("dashboard_fakes")


@pytest.mark.skipif(chromium.skip_reason() is not None, reason=chromium.skip_reason() or "")
def test_custom_frontends_in_chromium(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "state", tmp_path / "run")
    meta = MetaRepo.open_or_init(layout, Config(default_model="haiku"))
    work = tmp_path / "op"
    git("clone", "-q", str(meta.path), str(work))
    push_bundles(work)
    fakes = _fakes()
    ops, broker = fakes.demo()
    tokens = LoginTokens()
    stop = threading.Event()
    app = make_dashboard_app(
        ops, broker, operator_key="browser-custom-ui-key", login_tokens=tokens,
        web_sock=lambda name: tmp_path / f"{name}.sock", stop=stop,
        frontend=FrontendFiles(meta.path, meta.desired),
    )  # fmt: skip

    class AliceUi(fakes.FakeAgentUi):  # type: ignore[name-defined,misc]
        """alice's UI as the harness renders her settings: with her extra files."""

        async def on_get(self, req: Any, resp: Any, what: str) -> None:
            await super().on_get(req, resp, what)
            if what == "state":
                resp.media = {**resp.media, "extra_files": [{"key": "game", "target": "game"}]}

    alice_ui = AliceUi("alice")
    bob_ui = fakes.FakeAgentUi("bob")
    bob_ui.push('{"kind": "turn_end", "n": 1}')
    shot = tmp_path / "custom-game.png"
    with (
        fakes.serve_agent_ui(alice_ui, tmp_path / "alice.sock"),
        fakes.serve_agent_ui(bob_ui, tmp_path / "bob.sock"),
        fakes.serve(app) as base,
    ):
        login = f"{base}/login?token={tokens.issue().token}"
        try:
            proc = subprocess.run(["node", str(SCRIPT), base, login, str(shot)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
        finally:
            stop.set()
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "fatal" not in seen, seen["fatal"]
    assert seen["errors"] == []

    # alice's extraFiles: linked from her built-in UI, served and run, sandboxed
    assert seen["extraLinks"] == [["game ↗", f"{base}/agents/alice/game/"]]
    assert seen["gameStatus"] == 200
    assert seen["gameUrl"].startswith("/agents/alice/files/")
    assert seen["gameUrl"].endswith("/game/")
    assert seen["gameTitle"] == "game ok"
    report = seen["gameReport"]
    assert report["logo"] == "loaded"
    assert report["origin"] == "null"  # an opaque origin
    assert report["cookie"].startswith("blocked") and report["storage"].startswith("blocked")
    assert report["api"].startswith("blocked")  # the dashboard API refuses an opaque origin
    assert shot.stat().st_size > 1000

    # bob's dist: the shell frames it; the bridge carries the agent UI's JSON contract
    assert seen["shellTitle"] == "bob · hyperhive"
    assert seen["bobHeading"] == "bob's own UI"
    assert seen["bobFrameOrigin"] == "null"
    assert seen["bobCanReachParent"].startswith("blocked")
    out = seen["bobOut"]
    assert out["state"] == "200 bob"
    assert out["send"] == '200 {"body":"hello from the custom UI"}'
    assert out["escape"] == 400  # only api/* of its own agent
    assert out["events"] == [{"kind": "turn_end", "n": 1}]
    sent = [r for r in bob_ui.seen if r["path"] == "/api/send"]
    assert len(sent) == 1 and "cookie" not in sent[0]["headers"]
    assert any(r["path"] == "/events/stream" for r in bob_ui.seen)
