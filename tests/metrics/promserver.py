"""A real Prometheus server (Debian's ``prometheus``) run by a test: temp config and data
dir, a free loopback port, stopped at the end; and ``promtool``.

In CI (``CI=true``) a missing binary fails the test with what to install; elsewhere the
test is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realserve import free_port, wait_for

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "docs" / "observability" / "alerts.rules.yml"


def need(binary: str) -> str:
    """The path of ``binary`` (``prometheus``, ``promtool``); fails in CI, skips elsewhere."""
    found = shutil.which(binary)
    if found:
        return found
    why = f"{binary} is not installed (Debian: apt-get install prometheus; .ci/run does it)"
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


@dataclass
class Prometheus:
    """One running server; ``query(promql)`` answers through its HTTP API."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(
        cls, tmp: Path, targets: list[str], token_file: Path | None = None, rules: bool = True
    ) -> Prometheus:
        """Scrape ``targets`` (``host:port``) every second, loading the alert rules."""
        binary = need("prometheus")
        job: dict[str, Any] = {
            "job_name": "hyperhive",
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "static_configs": [{"targets": targets}],
        }
        if token_file is not None:
            job["authorization"] = {"type": "Bearer", "credentials_file": str(token_file)}
        doc: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [job],
        }
        if rules:
            doc["rule_files"] = [str(RULES)]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(doc))
        port = free_port()
        log = tmp / "prometheus.log"
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        server = cls(proc, port, log)
        wait_for("prometheus ready", server.ready, timeout=60)
        return server

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return bool(r.status == 200)

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            doc = json.loads(r.read())
        assert doc["status"] == "success", doc
        return doc["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector ``promql`` evaluates to now."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def value(self, promql: str) -> float | None:
        """The single value of a one-sample ``promql``; ``None`` when it has no sample."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``promtool ARGS`` (stdin ``stdin``), its output captured."""
    return subprocess.run(
        [need("promtool"), *args], input=stdin, capture_output=True, timeout=60, check=False
    )
