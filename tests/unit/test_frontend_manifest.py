"""spec.frontend / spec.forge in the manifest: parsed, and bad paths refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.forge.notify import Facts, classify, mentions
from controller.manifest import ManifestInvalid, parse_manifest, render_settings
from controller.model import AgentManifest, ExtraFiles
from harness.config import SettingsError, load_settings

HEAD = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: alice}\nspec:\n"


def parse(spec: str) -> AgentManifest:
    return parse_manifest(HEAD + spec, "alice")


def test_frontend_and_forge_parse() -> None:
    m = parse(
        "  forge: {skipNotifyReasons: [subscribed], keepSubscriptions: true}\n"
        "  frontend:\n"
        "    dist: ui-dist/\n"
        "    extraFiles:\n"
        "      game: {source: game/dist}\n"
        "      docs: {source: notes.html, target: help/notes.html}\n"
    )
    assert m.forge.skip_notify_reasons == ("subscribed",)
    assert m.forge.keep_subscriptions is True
    assert m.frontend.dist == "ui-dist"
    assert m.frontend.extra_files == (
        ExtraFiles("docs", "notes.html", "help/notes.html"),
        ExtraFiles("game", "game/dist", "game"),
    )


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ("x: {source: x, target: static/app.js}", "extraFiles.x.target", "overwrite a built-in"),
        ("x: {source: x, target: index.html}", "extraFiles.x.target", "overwrite a built-in"),
        ("api: {source: x}", "extraFiles.api.target", "overwrite a built-in"),
        ("x: {source: x, target: /abs}", "extraFiles.x.target", "starts with '/'"),
        ("x: {source: /etc/passwd}", "extraFiles.x.source", "starts with '/'"),
        ("x: {source: ../bob/secret}", "extraFiles.x.source", "'..' segment"),
        ("x: {source: a, target: a/../../b}", "extraFiles.x.target", "'..' segment"),
        ("x: {source: a//b}", "extraFiles.x.source", "empty"),
    ],
)
def test_bad_extra_files_are_refused_with_the_reason(entry: str, field: str, reason: str) -> None:
    with pytest.raises(ManifestInvalid) as err:
        parse(f"  frontend:\n    extraFiles:\n      {entry}\n")
    assert err.value.schema_field == f"spec.frontend.{field}"
    assert reason in err.value.reason
    assert str(err.value).startswith("agents/alice/agent.yaml: spec.frontend.")


def test_overlapping_targets_and_bad_dist_are_refused() -> None:
    with pytest.raises(ManifestInvalid, match="overlaps"):
        parse("  frontend:\n    extraFiles:\n      a: {source: a, target: g}\n"
              "      b: {source: b, target: g/sub}\n")  # fmt: skip
    with pytest.raises(ManifestInvalid, match=r"spec.frontend.dist: '../x' has a '..'"):
        parse("  frontend: {dist: ../x}\n")


def test_unknown_skip_reason_is_refused() -> None:
    with pytest.raises(ManifestInvalid, match=r"spec\.forge\.skipNotifyReasons"):
        parse("  forge: {skipNotifyReasons: [mentions]}\n")


def test_mentions_and_reasons() -> None:
    assert mentions("hey @alice, look", "alice")
    assert not mentions("hey @alice2", "alice")
    assert not mentions("mail bob@alice.org", "alice")
    assert classify("alice", Facts(author="alice", text="@alice")) == "mention"
    assert classify("alice", Facts(author="alice", requested_reviewers=("alice",))) == (
        "review_requested"
    )
    assert classify("alice", Facts(author="bob", commenters=("alice",))) == "participating"
    assert classify("alice", Facts(author="bob")) == "subscribed"


def test_extra_files_reach_the_harness_settings(tmp_path: Path) -> None:
    m = parse("  frontend:\n    extraFiles:\n      game: {source: game-dist}\n")
    settings = render_settings(m, web_port=8100, dashboard_url="http://x", meta_commit="c",
                               hyperhive_version="0")  # fmt: skip
    assert settings["frontend_extra"] == [{"key": "game", "target": "game"}]
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings))
    assert load_settings(path, agent="alice", flavor="agent").frontend_extra == (("game", "game"),)
    settings["frontend_extra"] = [{"key": "x", "target": "../up"}]
    path.write_text(json.dumps(settings))
    with pytest.raises(SettingsError, match="bad target"):
        load_settings(path, agent="alice", flavor="agent")
    plain = render_settings(parse("  model: haiku\n"), web_port=8100, dashboard_url="http://x",
                            meta_commit="c", hyperhive_version="0")  # fmt: skip
    assert "frontend_extra" not in plain
