"""controller.manifest: parsing, schema errors that name file and field, settings rendering."""

from __future__ import annotations

import pytest

from controller.errors import Invalid
from controller.manifest import (
    ManifestInvalid,
    default_manifest_yaml,
    parse_manifest,
    render_settings,
)
from controller.model import McpServer

FULL = """\
apiVersion: hyperhive/v1
kind: Agent
metadata:
  name: alice
  labels: {team: web}
spec:
  model: sonnet
  suspend: true
  allowedRecipients: [bob, operator]
  mcpServers:
    matrix:
      command: /bin/matrix-mcp
      args: [--room, "#x"]
      env: {TOKEN: abc}
      allowedTools: [send_message]
    echo:
      command: echo-mcp
  plugins: [p1]
  marketplaces: [https://example.org/m]
  resources: {memoryMax: 2G, cpuQuota: 50%, tasksMax: 64}
"""


def test_parse_full_manifest() -> None:
    m = parse_manifest(FULL, "alice")
    assert m.name == "alice"
    assert m.model == "sonnet"
    assert m.suspend is True
    assert m.allowed_recipients == ("bob", "operator")
    assert m.mcp_servers == (
        McpServer("echo", "echo-mcp", (), {}, ("*",)),
        McpServer(
            "matrix", "/bin/matrix-mcp", ("--room", "#x"), {"TOKEN": "abc"}, ("send_message",)
        ),
    )
    assert m.plugins == ("p1",)
    assert m.marketplaces == ("https://example.org/m",)
    assert m.resources.memory_max == "2G"
    assert m.resources.tasks_max == 64


def test_minimal_manifest_defaults() -> None:
    m = parse_manifest(default_manifest_yaml("bob", "haiku"), "bob")
    assert (m.name, m.model, m.suspend, m.allowed_recipients) == ("bob", "haiku", False, ())
    assert parse_manifest(b"apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: bob}\n", "bob")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (
            "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: a}\n"
            "spec: {model: 'bad model'}\n",
            "spec.model",
            "does not match",
        ),
        (
            "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: a}\nspec: {modle: x}\n",
            "spec.modle",
            "not an allowed field",
        ),
        ("apiVersion: hyperhive/v1\nkind: Agent\n", "metadata", "required"),
        ("apiVersion: hyperhive/v2\nkind: Agent\nmetadata: {name: a}\n", "apiVersion", ""),
        (
            "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: b}\n",
            "metadata.name",
            "directory is agents/a/",
        ),
        ("- a\n- b\n", "(root)", "mapping"),
        ("", "(root)", "empty"),
        ("spec: [unclosed\n", "(root)", "not valid YAML at line"),
    ],
)
def test_errors_name_file_and_field(text: str, field: str, words: str) -> None:
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(text, "a")
    err = info.value
    assert isinstance(err, Invalid)
    assert err.field == "agents/a/agent.yaml"
    assert err.schema_field == field
    assert str(err).startswith(f"agents/a/agent.yaml: {field}: ")
    assert words in str(err)


def test_render_settings_shape() -> None:
    m = parse_manifest(FULL, "alice")
    s = render_settings(
        m,
        web_port=8123,
        dashboard_url="http://127.0.0.1:7000",
        meta_commit="c0ffee",
        hyperhive_version="0.1.0",
    )
    assert s == {
        "agent": "alice",
        "flavor": "agent",
        "model": "sonnet",
        "allowed_recipients": ["bob", "operator"],
        "mcp_servers": {
            "echo": {"command": "echo-mcp", "args": [], "env": {}, "allowedTools": ["*"]},
            "matrix": {
                "command": "/bin/matrix-mcp",
                "args": ["--room", "#x"],
                "env": {"TOKEN": "abc"},
                "allowedTools": ["send_message"],
            },
        },
        "plugins": ["p1"],
        "marketplaces": ["https://example.org/m"],
        "web_port": 8123,
        "dashboard_url": "http://127.0.0.1:7000",
        "meta_commit": "c0ffee",
        "hyperhive_version": "0.1.0",
        "operator_pronouns": "she/her",
    }


def test_render_settings_manager_flavor_and_no_shadowing() -> None:
    text = (
        "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: manager}\n"
        "spec: {mcpServers: {hyperhive: {command: evil}}}\n"
    )
    s = render_settings(
        parse_manifest(text, "manager"),
        web_port=8000,
        dashboard_url="d",
        meta_commit="c",
        hyperhive_version="v",
    )
    assert s["flavor"] == "manager"
    assert s["mcp_servers"] == {}


def test_turn_timeout_reaches_settings_only_when_set() -> None:
    head = "apiVersion: hyperhive/v1\nkind: Agent\nmetadata: {name: a}\n"
    kw = {"web_port": 1, "dashboard_url": "u", "meta_commit": "c", "hyperhive_version": "v"}
    timed = parse_manifest(head + "spec: {turnTimeoutSeconds: 600}\n", "a")
    assert timed.turn_timeout_seconds == 600
    assert render_settings(timed, **kw)["turn_timeout_seconds"] == 600
    assert "turn_timeout_seconds" not in render_settings(parse_manifest(head, "a"), **kw)
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(head + "spec: {turnTimeoutSeconds: 0}\n", "a")
    assert info.value.schema_field == "spec.turnTimeoutSeconds"
