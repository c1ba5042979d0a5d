"""Model override rules: /model persists; a deploy that changes spec.model wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.model import InvalidModel, ModelStore, check_model


def test_default_is_the_settings_model(tmp_path: Path) -> None:
    m = ModelStore(tmp_path / "hyperhive-model", "haiku")
    assert m.current() == "haiku" and m.override is None


def test_override_persists_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "hyperhive-model"
    ModelStore(path, "haiku", clock=lambda: 5.0).set("sonnet")
    assert json.loads(path.read_text()) == {
        "model": "sonnet",
        "settings_model": "haiku",
        "set_at": 5.0,
    }
    again = ModelStore(path, "haiku")
    assert again.current() == "sonnet" and again.override == "sonnet"


def test_deploy_changing_the_model_drops_the_override(tmp_path: Path) -> None:
    path = tmp_path / "hyperhive-model"
    ModelStore(path, "haiku").set("sonnet")
    after_deploy = ModelStore(path, "opus")
    assert after_deploy.current() == "opus" and after_deploy.override is None
    assert not path.exists()


def test_setting_the_settings_model_clears(tmp_path: Path) -> None:
    path = tmp_path / "hyperhive-model"
    m = ModelStore(path, "haiku")
    m.set("sonnet")
    assert m.set("haiku") == "haiku"
    assert m.override is None and not path.exists()


def test_garbage_file_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "hyperhive-model"
    path.write_text("sonnet\n")
    assert ModelStore(path, "haiku").current() == "haiku"
    assert not path.exists()


def test_unwritable_file_still_applies(tmp_path: Path) -> None:
    m = ModelStore(tmp_path / "missing-dir" / "hyperhive-model", "haiku")
    assert m.set("sonnet") == "sonnet" and m.current() == "sonnet"


@pytest.mark.parametrize(
    "name", ["haiku", "sonnet[1m]", "claude-opus-4-1-20250805", "us.anthropic.claude:1"]
)
def test_valid_names(name: str) -> None:
    assert check_model(name) == name


@pytest.mark.parametrize("name", ["", " haiku", "a b", "x" * 101, "--model", 5, None])
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidModel, match="model:"):
        check_model(name)
