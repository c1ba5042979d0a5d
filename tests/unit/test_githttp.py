"""The pure parts of meta.git over HTTP (``controller.githttp``) and the refusal log."""

from __future__ import annotations

import base64
import logging

import pytest

from controller.auth.refusals import RefusalLog
from controller.githttp import parse_cgi, presented_key, route


def _basic(user_pw: str) -> str:
    return "Basic " + base64.b64encode(user_pw.encode()).decode()


def test_presented_key() -> None:
    assert presented_key("Bearer abc") == "abc"
    assert presented_key("bearer abc") == "abc"
    assert presented_key(_basic("operator:k3y")) == "k3y"
    assert presented_key(_basic("anyone:a:b")) == "a:b"  # the password may hold colons
    for bad in (None, "", "Token abc", _basic("operator:"), _basic("nocolon"), "Basic !!",
                "Basic " + base64.b64encode(b"\xff:\xfe").decode()):  # fmt: skip
        assert presented_key(bad) is None, bad


@pytest.mark.parametrize(
    "method,path,query,want",
    [
        ("GET", "/meta.git/info/refs", "service=git-upload-pack", "/meta.git/info/refs"),
        ("GET", "/meta.git/info/refs", "service=git-receive-pack", "/meta.git/info/refs"),
        ("GET", "/meta.git/info/refs", "", None),  # the dumb protocol
        ("GET", "/meta.git/info/refs", "service=git-upload-archive", None),
        ("POST", "/meta.git/git-upload-pack", "", "/meta.git/git-upload-pack"),
        ("POST", "/meta.git/git-receive-pack", "", "/meta.git/git-receive-pack"),
        ("POST", "/meta.git/git-upload-archive", "", None),
        ("GET", "/meta.git/HEAD", "", None),
        ("GET", "/meta.git/objects/info/packs", "", None),
        ("GET", "/meta.git/../operator.key", "", None),
        ("POST", "/meta.git/../x/git-receive-pack", "", None),
        ("GET", "/other.git/info/refs", "service=git-upload-pack", None),
        ("PUT", "/meta.git/git-receive-pack", "", None),
    ],
)
def test_route(method: str, path: str, query: str, want: str | None) -> None:
    assert route(method, path, query) == want


def test_parse_cgi() -> None:
    cgi = parse_cgi(b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno")
    assert (cgi.status, cgi.headers, cgi.body) == (403, [(b"content-type", b"text/plain")], b"no")
    cgi = parse_cgi(b"Content-Type: application/x-git\nExpires: 0\n\n\x00\x01")
    assert cgi.status == 200 and cgi.body == b"\x00\x01" and len(cgi.headers) == 2
    with pytest.raises(ValueError):
        parse_cgi(b"no headers end")


def test_refusal_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog("test surface", every=3600)
    with caplog.at_level(logging.WARNING, logger="controller.auth"):
        for i in range(1000):
            refusals.note(f"10.0.0.{i % 250}", "no credential")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "since start" in lines[0] and "test surface" in lines[0]
    assert refusals.count == 999
