"""operator_pronouns: from the controller's config, through settings.json, into the prompts.

The original's ``services.hive-c0re.operatorPronouns`` (default "she/her"): how the
agents' prompts refer to the operator. The NixOS option (``operatorPronouns``) is
checked in tests/nix; the model reading it, in
tests/integration/harness/test_harness_serve.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.config import Config, config_from_dict, load_config
from controller.manifest import parse_manifest, render_settings
from harness.config import SettingsError, load_settings, parse_settings
from harness.prompts import intro, wake_prompt
from schemas.names import DEFAULT_OPERATOR_PRONOUNS
from schemas.validate import ValidationFailed
from schemas.wire import Message

MANIFEST = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata:\n  name: {name}\n"


def settings_for(name: str, cfg: Config) -> dict[str, object]:
    """settings.json as the controller renders it for ``name`` under ``cfg``."""
    return render_settings(
        parse_manifest(MANIFEST.format(name=name), name),
        web_port=8123,
        dashboard_url="http://127.0.0.1:7000",
        meta_commit="c0ffee",
        hyperhive_version="0.1.0",
        operator_pronouns=cfg.operator_pronouns,
    )


def test_default_is_she_her() -> None:
    assert DEFAULT_OPERATOR_PRONOUNS == "she/her"
    assert Config().operator_pronouns == "she/her"
    assert config_from_dict({}).operator_pronouns == "she/her"
    assert parse_settings({}, agent="a", flavor="agent").operator_pronouns == "she/her"
    schema = json.loads(
        (Path(__file__).parents[2] / "schemas" / "json" / "config.schema.json").read_text()
    )
    assert schema["properties"]["operator_pronouns"]["default"] == "she/her"


def test_config_file_sets_it(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("operator_pronouns: they/them\n")
    assert load_config(path).operator_pronouns == "they/them"


@pytest.mark.parametrize("bad", ["", "she/her\n", "a\tb", "x" * 33, 5])
def test_config_refuses_a_bad_value(bad: object) -> None:
    with pytest.raises(ValidationFailed) as info:
        config_from_dict({"operator_pronouns": bad})
    assert info.value.field == "operator_pronouns"


@pytest.mark.parametrize("bad", ["she/her\n", "x" * 33, 5, ["she"]])
def test_harness_refuses_a_bad_value(bad: object) -> None:
    with pytest.raises(SettingsError, match="operator_pronouns"):
        parse_settings({"operator_pronouns": bad}, agent="a", flavor="agent")


@pytest.mark.parametrize(("name", "flavor"), [("alice", "agent"), ("manager", "manager")])
def test_config_to_prompt(tmp_path: Path, name: str, flavor: str) -> None:
    """The controller's value, rendered, read by the harness, in the role intro."""
    cfg = config_from_dict({"operator_pronouns": "they/them"})
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(settings_for(name, cfg)))
    settings = load_settings(path, agent=name, flavor=flavor)
    assert settings.operator_pronouns == "they/them"
    text = intro(name, flavor, "/state", settings.operator_pronouns)
    assert "(a human, they/them)" in " ".join(text.split())
    assert "use they/them pronouns" in " ".join(text.split())
    assert "she/her" not in text and "$operator_pronouns" not in text


def test_wake_prompt_carries_it_only_with_the_intro() -> None:
    msg = Message(id=1, sender="operator", recipient="alice", body="hi", sent_at=1.0)
    fresh = wake_prompt(
        msg, agent="alice", flavor="agent", state_dir="/s", fresh_session=True,
        operator_pronouns="he/him",
    )  # fmt: skip
    assert "(a human, he/him)" in " ".join(fresh.split())
    later = wake_prompt(
        msg, agent="alice", flavor="agent", state_dir="/s", fresh_session=False,
        operator_pronouns="he/him",
    )  # fmt: skip
    assert "he/him" not in later
    # without a value: the default
    assert "(a human, she/her)" in " ".join(intro("alice", "agent", "/s").split())
