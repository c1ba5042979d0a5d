"""nix/image.nix, the OCI image of the kubernetes runtime, evaluates (it is not built here:
no nixpkgs and no store on this machine). ``dockerTools.streamLayeredImage`` is stood in
for by a function that returns its arguments, on the nixpkgs stand-in of tests/nix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.nix.nixeval import ROOT, make_env, nix_eval, nix_path, require_nix

pytestmark = require_nix()


@pytest.fixture(scope="module")
def nix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    yield make_env(tmp_path_factory.mktemp("nix-home"))


def test_image_evaluates_with_harness_git_and_claude(nix_env: dict[str, str]) -> None:
    standin = nix_path(ROOT / "tests/nix/nixpkgs-stand-in/pkgs.nix")
    image = nix_path(ROOT / "nix/image.nix")
    expr = f"""
      let
        base = import {standin} {{ }};
        pkg = name: {{ type = "derivation"; inherit name; outPath = "/nix/store/x-${{name}}"; }};
        pkgs = base // {{
          dockerTools.streamLayeredImage = args: args;
          coreutils = pkg "coreutils";
          bashInteractive = pkg "bash";
          cacert = pkg "cacert";
          ripgrep = pkg "ripgrep";
        }};
        img = import {image} {{ inherit pkgs; extraPackages = [ pkgs.ripgrep ]; }};
      in {{
        inherit (img) name tag fakeRootCommands;
        contents = map (p: p.name) img.contents;
        inherit (img.config) User Cmd Env WorkingDir;
      }}
    """
    got = nix_eval(expr, nix_env)
    assert (got["name"], got["tag"]) == ("hyperhive", "latest")
    assert got["contents"] == [
        "hyperhive-0.1.0",
        "git",
        "claude-code-2.0.0",
        "coreutils",
        "bash",
        "cacert",
        "ripgrep",
    ]
    # the pods run as uid 1000 with a read-only root (render.py): the image agrees
    assert got["User"] == "1000:1000"
    assert got["Cmd"] == ["hyperhive-agent", "serve"]
    env = dict(e.split("=", 1) for e in got["Env"])
    assert env["HYPERHIVE_CLAUDE_BIN"].endswith("claude-code-2.0.0/bin/claude")
    assert "/nix/store/x-ripgrep/bin" in env["PATH"]
    assert "chown 1000:1000 run/hyperhive var/lib/hyperhive" in got["fakeRootCommands"]


def test_the_flake_exposes_the_image() -> None:
    text = Path(ROOT / "flake.nix").read_text()
    assert "image = import ./nix/image.nix" in text
