"""harness.login: credential detection and the operator-supplied key / token store."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from harness import login


def test_detection_sources(tmp_path: Path) -> None:
    cfg = tmp_path / "claude"
    assert login.credential_source({}, cfg) is None and not login.has_credentials({}, cfg)
    assert login.credential_source({"ANTHROPIC_API_KEY": "k"}, cfg) == "env ANTHROPIC_API_KEY"
    assert login.credential_source({"CLAUDE_CODE_OAUTH_TOKEN": "t"}, cfg) == (
        "env CLAUDE_CODE_OAUTH_TOKEN"
    )
    assert login.credential_source({"ANTHROPIC_API_KEY": ""}, cfg) is None
    assert login.credential_source({"CLAUDE_CODE_USE_BEDROCK": "1"}, cfg) == "provider bedrock"
    cfg.mkdir()
    (cfg / ".credentials.json").write_text("{}")
    assert login.credential_source({}, cfg) is None  # empty JSON is no login
    (cfg / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "x"}}')
    assert login.credential_source({}, cfg) == "claude login"
    (cfg / ".credentials.json").unlink()
    (cfg / "settings.json").write_text('{"apiKeyHelper": "cat /k"}')
    assert login.credential_source({}, cfg) == "apiKeyHelper"
    (cfg / "settings.json").write_text("not json")
    assert login.credential_source({}, cfg) is None


def test_store_api_key_keeps_the_clis_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "claude"
    cfg.mkdir()
    cli_settings = {"enabledPlugins": {"hello@mkt": True}, "env": {"FOO": "1"}}
    (cfg / "settings.json").write_text(json.dumps(cli_settings))
    login.store_credential(cfg, "api_key", "  sk-ant-api03-abc  ", clock=lambda: 5.0)
    doc = json.loads((cfg / "settings.json").read_text())
    assert doc == {"enabledPlugins": {"hello@mkt": True},
                   "env": {"FOO": "1", "ANTHROPIC_API_KEY": "sk-ant-api03-abc"}}  # fmt: skip
    assert stat.S_IMODE((cfg / "settings.json").stat().st_mode) == 0o600
    assert json.loads((cfg / "hyperhive-login.json").read_text()) == {
        "kind": "api_key",
        "stored_at": 5.0,
    }
    assert "sk-ant" not in (cfg / "hyperhive-login.json").read_text()
    # the settings env beats the process env (claude applies it over its environment)
    assert login.credential_source({"ANTHROPIC_API_KEY": "env"}, cfg) == "stored api key"
    assert login.stored_kind(cfg) == "api_key"
    assert login.stored_hint(cfg) == "sk-ant-api03-…"  # too short to show its end


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("sk-ant-api03-" + "x" * 80 + "wxyz", "sk-ant-api03-…wxyz"),
        ("sk-ant-oat01-" + "y" * 60 + "9876", "sk-ant-oat01-…9876"),
        ("plainlongsecretvalue1234", "…1234"),
        ("short-secret", "…"),
    ],
)
def test_stored_secrets_are_shown_masked(tmp_path: Path, value: str, shown: str) -> None:
    cfg = tmp_path / "claude"
    login.store_credential(cfg, "api_key", value)
    assert login.stored_hint(cfg) == shown
    assert login.mask_secret(value) == shown
    assert value[:-4] not in shown


def test_store_oauth_token_blanks_a_key_and_forget_undoes_it(tmp_path: Path) -> None:
    cfg = tmp_path / "claude"
    login.store_credential(cfg, "api_key", "sk-1")
    login.store_credential(cfg, "oauth_token", "sk-ant-oat01-xyz")
    env = json.loads((cfg / "settings.json").read_text())["env"]
    assert env == {"CLAUDE_CODE_OAUTH_TOKEN": "sk-ant-oat01-xyz", "ANTHROPIC_API_KEY": ""}
    assert login.credential_source({"ANTHROPIC_API_KEY": "k"}, cfg) == "stored oauth token"
    before = login.fingerprint({}, cfg)
    assert login.forget_credential(cfg) is True
    assert json.loads((cfg / "settings.json").read_text()) == {}
    assert login.stored_kind(cfg) is None and login.credential_source({}, cfg) is None
    assert login.fingerprint({}, cfg) != before
    assert login.forget_credential(cfg) is False


def test_forget_leaves_a_key_the_operator_put_there_by_hand(tmp_path: Path) -> None:
    cfg = tmp_path / "claude"
    cfg.mkdir()
    (cfg / "settings.json").write_text('{"env": {"ANTHROPIC_API_KEY": "by-hand"}}')
    assert login.forget_credential(cfg) is False
    assert login.credential_source({}, cfg) == "stored api key"


@pytest.mark.parametrize(
    ("kind", "value", "field"),
    [
        ("password", "x", "kind"),
        ("api_key", "", "value"),
        ("api_key", None, "value"),
        ("api_key", "two words", "value"),
        ("api_key", "tab\there", "value"),
        ("oauth_token", "é", "value"),
        ("oauth_token", "x" * 5000, "value"),
    ],
)
def test_bad_secrets_are_refused(kind: str, value: object, field: str, tmp_path: Path) -> None:
    with pytest.raises(login.InvalidCredential, match=f"^{field}:"):
        login.store_credential(tmp_path, kind, value)  # type: ignore[arg-type]
    assert not (tmp_path / "settings.json").exists()


def test_check_code() -> None:
    assert login.check_code("  abc#def\n") == "abc#def"
    for bad in ("", "abc", "a b#c", None, "x#" + "y" * 5000):
        with pytest.raises(login.InvalidCredential, match=r"^code:"):
            login.check_code(bad)


def test_url_pattern_matches_the_clis_line() -> None:
    line = (
        "If the browser didn't open, visit: https://claude.com/cai/oauth/authorize?code=true&"
        "client_id=9d1c&response_type=code&state=abc\n"
    )
    m = login.URL_RE.search(line)
    assert m and m.group(1).endswith("state=abc")
