"""Custom front-end bundles in a real meta repo, for the component and browser tests.

``push_bundles(meta, work)`` commits, from the operator's clone ``work`` of meta.git,
two agents with custom files and pushes them through the real hooks:

- ``alice``: ``extraFiles.game`` → ``game-dist/`` (``index.html``, ``game.js``, ``logo.svg``),
  a page that runs its script, loads its own image and records what the sandbox lets it
  do into the DOM (``#report``);
- ``bob``: ``frontend.dist`` → ``bob-ui/`` (``index.html``, ``main.js``), a whole custom UI
  speaking the agent UI's JSON contract through the dashboard's bridge: it GETs
  ``api/state``, POSTs ``api/send`` and opens the event stream, and shows what came back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.gitutil import git

GAME_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>game</title></head>
<body><h1 id="title">waiting</h1><img id="logo" src="logo.svg" alt="logo">
<pre id="report"></pre><script src="game.js"></script></body></html>
"""

GAME_JS = r"""
const report = {};
document.getElementById("title").textContent = "game ok";
try { report.cookie = document.cookie; } catch (e) { report.cookie = "blocked: " + e.name; }
try { localStorage.setItem("x", "1"); report.storage = "open"; }
catch (e) { report.storage = "blocked: " + e.name; }
report.origin = self.origin;
fetch("/api/state", { credentials: "include" })
  .then((r) => { report.api = "status " + r.status; })
  .catch((e) => { report.api = "blocked: " + e.name; })
  .finally(() => {
    const img = document.getElementById("logo");
    report.logo = img.complete && img.naturalWidth > 0 ? "loaded" : "missing";
    document.getElementById("report").textContent = JSON.stringify(report);
  });
"""

LOGO_SVG = """<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">
<rect width="16" height="16" fill="#7ee787"/></svg>
"""

BOB_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>bob custom</title></head>
<body><h1>bob's own UI</h1><pre id="out"></pre><script src="main.js"></script></body></html>
"""

BOB_JS = r"""
// the client side of the dashboard's bridge (docs/web-ui.md "Custom front-ends")
let next = 1;
const waiting = new Map();
const listeners = new Map();
window.addEventListener("message", (ev) => {
  const m = ev.data;
  if (!m || m.hyperhive !== 1) return;
  if (m.type === "response") { waiting.get(m.id)?.(m); waiting.delete(m.id); }
  else listeners.get(m.id)?.(m);
});
function api(method, path, body) {
  const id = next++;
  return new Promise((resolve) => {
    waiting.set(id, resolve);
    parent.postMessage({ hyperhive: 1, id, type: "request", method, path, body }, "*");
  });
}
function events(onEvent) {
  const id = next++;
  listeners.set(id, onEvent);
  parent.postMessage({ hyperhive: 1, id, type: "events", backfill: 0 }, "*");
}
const out = { events: [] };
const show = () => { document.getElementById("out").textContent = JSON.stringify(out); };
events((m) => { if (m.type === "event") { out.events.push(m.data); show(); } });
(async () => {
  const state = await api("GET", "api/state");
  out.state = state.status + " " + state.body.agent;
  const sent = await api("POST", "api/send", { body: "hello from the custom UI" });
  out.send = sent.status + " " + sent.body.echo;
  const bad = await api("GET", "../api/state");
  out.escape = bad.status;
  out.done = true;
  show();
})();
"""

ALICE_YAML = """apiVersion: hyperhive/v1
kind: Agent
metadata: {name: alice}
spec:
  frontend:
    extraFiles:
      game: {source: game-dist}
"""

BOB_YAML = """apiVersion: hyperhive/v1
kind: Agent
metadata: {name: bob}
spec:
  frontend: {dist: bob-ui}
"""

OVERWRITE_YAML = """apiVersion: hyperhive/v1
kind: Agent
metadata: {name: alice}
spec:
  frontend:
    extraFiles:
      evil: {source: game-dist/game.js, target: static/app.js}
"""


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def push(work: Path) -> subprocess.CompletedProcess[str]:
    """``git push origin HEAD:main`` (not checked)."""
    return git("push", "origin", "HEAD:main", cwd=work, check=False)


def push_bundles(work: Path) -> None:
    """Commit and push alice's extraFiles and bob's dist (see the module doc)."""
    write(work, {
        "agents/alice/agent.yaml": ALICE_YAML,
        "agents/alice/game-dist/index.html": GAME_HTML,
        "agents/alice/game-dist/game.js": GAME_JS,
        "agents/alice/game-dist/logo.svg": LOGO_SVG,
        "agents/bob/agent.yaml": BOB_YAML,
        "agents/bob/bob-ui/index.html": BOB_HTML,
        "agents/bob/bob-ui/main.js": BOB_JS,
    })  # fmt: skip
    git("add", "-A", cwd=work)
    git("commit", "-qm", "alice: a game; bob: his own UI", cwd=work)
    res = push(work)
    assert res.returncode == 0, res.stderr


def try_overwrite(work: Path) -> subprocess.CompletedProcess[str]:
    """Commit alice's manifest with an extraFiles entry over ``static/app.js`` and push it."""
    write(work, {"agents/alice/agent.yaml": OVERWRITE_YAML})
    git("commit", "-qam", "alice: replace the built-in script", cwd=work)
    return push(work)


def try_overwrite_commit(work: Path) -> str:
    """Commit (not push) the overwriting manifest in ``work``; returns the commit id."""
    write(work, {"agents/alice/agent.yaml": OVERWRITE_YAML})
    git("commit", "-qam", "alice: replace the built-in script", cwd=work)
    return git("rev-parse", "HEAD", cwd=work).stdout.strip()
