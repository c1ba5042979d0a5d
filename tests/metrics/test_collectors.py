"""controller.metrics: the collectors, the endpoint's access rule, the request observer, the
config keys. Real sqlite files (the harness' own TurnStats writes the turn rows), real
sockets."""

from __future__ import annotations

import gzip
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import falcon.asgi
import pytest
from prometheus_client import generate_latest

from controller.config import Config, config_from_dict
from controller.metrics import TurnCollector, new_registry, trigger_of
from controller.metrics.endpoint import TokenFileError, ensure_metrics_token, serve_metrics
from controller.metrics.events import EventMetrics, status_class
from controller.metrics.http import observe_http
from controller.paths import Layout
from harness.turnstats import TurnRow, TurnStats
from hivehttp import UNMATCHED, serve_tcp, set_request_observer
from schemas.validate import ValidationFailed
from tests.metrics.promserver import promtool


def turn(model: str = "haiku", kind: str = "ok", ms: int = 1500, **kw: object) -> TurnRow:
    return TurnRow(
        model=model, result_kind=kind, started_at=1.0, ended_at=2.0, duration_ms=ms, **kw
    )  # type: ignore[arg-type]


def samples(registry: object) -> dict[str, float]:
    text = generate_latest(registry).decode()  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_turns_are_folded_once_and_follow_new_rows(tmp_path: Path) -> None:
    layout = Layout.for_state(tmp_path)
    alice = layout.agent_state("alice")
    alice.mkdir(parents=True)
    stats = TurnStats(alice / "hyperhive-turn-stats.sqlite")
    stats.record(
        turn(input_tokens=10, output_tokens=5, cache_read_tokens=7, cost_usd=0.25,
             tool_breakdown={"Bash": 2}, compactions=1)
    )  # fmt: skip
    stats.record(turn(kind="failed", ms=45_000, input_tokens=1))
    registry = new_registry()
    registry.register(TurnCollector(layout))
    got = samples(registry)
    assert got['hyperhive_turns_total{agent="alice",model="haiku",outcome="ok"}'] == 1
    assert got['hyperhive_turns_total{agent="alice",model="haiku",outcome="failed"}'] == 1
    assert got['hyperhive_turn_tokens_total{agent="alice",model="haiku",type="input"}'] == 11
    assert got['hyperhive_turn_tokens_total{agent="alice",model="haiku",type="cache_read"}'] == 7
    assert got['hyperhive_turn_cost_usd_total{agent="alice",model="haiku"}'] == 0.25
    assert got['hyperhive_turn_tool_calls_total{agent="alice",tool="Bash"}'] == 2
    assert got['hyperhive_turn_compactions_total{agent="alice"}'] == 1
    assert got['hyperhive_turn_duration_seconds_bucket{le="5.0",model="haiku"}'] == 1
    assert got['hyperhive_turn_duration_seconds_bucket{le="60.0",model="haiku"}'] == 2
    assert got['hyperhive_turn_duration_seconds_sum{model="haiku"}'] == 46.5
    assert got['hyperhive_turn_seconds_total{agent="alice",model="haiku"}'] == 46.5
    # a new row is added to the sums, the old ones are not read again
    stats.record(turn(model="sonnet", input_tokens=100))
    got = samples(registry)
    assert got['hyperhive_turns_total{agent="alice",model="haiku",outcome="ok"}'] == 1
    assert got['hyperhive_turns_total{agent="alice",model="sonnet",outcome="ok"}'] == 1
    assert got['hyperhive_turn_tokens_total{agent="alice",model="sonnet",type="input"}'] == 100
    # a purged agent's file is gone: so are its series
    stats.close()
    for p in alice.glob("hyperhive-turn-stats.sqlite*"):
        p.unlink()
    assert not any("alice" in k for k in samples(registry))
    # a fresh file starts from zero
    stats = TurnStats(alice / "hyperhive-turn-stats.sqlite")
    stats.record(turn())
    got = samples(registry)
    assert got['hyperhive_turns_total{agent="alice",model="haiku",outcome="ok"}'] == 1
    assert 'hyperhive_turns_total{agent="alice",model="sonnet",outcome="ok"}' not in got
    stats.close()
    checked = promtool("check", "metrics", stdin=generate_latest(registry))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_pass_triggers_are_a_bounded_set() -> None:
    assert trigger_of("crash: alice") == "crash"
    assert trigger_of("crash: alice, crash: bob") == "crash"
    assert trigger_of("approved/12") == "approval"
    assert trigger_of("restart alice") == "lifecycle"
    assert trigger_of("due: alice start") == "watch"
    assert trigger_of("hook") == "hook"
    assert trigger_of("something new") == "other"
    assert [status_class(s) for s in (200, 304, 404, 503, 0)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "none",
    ]


def test_a_non_loopback_metrics_listener_needs_a_token() -> None:
    with pytest.raises(ValidationFailed) as exc:
        config_from_dict({"metrics": {"host": "0.0.0.0", "port": 9464}})
    assert exc.value.field == "metrics.host"
    cfg = config_from_dict({"metrics": {"host": "0.0.0.0", "port": 9464, "token_file": "/t"}})
    assert (cfg.metrics_host, cfg.metrics_port, str(cfg.metrics_token_file)) == (
        "0.0.0.0", 9464, "/t",
    )  # fmt: skip
    assert Config().metrics_port is None  # off by default
    cfg = config_from_dict({"otel": {"endpoint": "http://127.0.0.1:4318", "claude_code": True}})
    assert (cfg.otel_endpoint, cfg.claude_code_telemetry) == ("http://127.0.0.1:4318", True)


def get(url: str, **headers: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_endpoint_checks_who_is_asking(tmp_path: Path) -> None:
    registry = new_registry()
    events = EventMetrics(registry)
    events.pass_done("startup", 0.01, [("create", "ok")])
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    guarded = serve_metrics(registry, "127.0.0.1", 0, token)
    made = ensure_metrics_token(tmp_path / "state" / "metrics.token")  # no token_file given
    own = serve_metrics(registry, "127.0.0.1", 0, made)
    try:
        url = f"http://127.0.0.1:{guarded.port}/metrics"
        status, body = get(url)
        assert status == 401 and json.loads(body)["error"]["field"] == "Authorization"
        assert get(url, Authorization="Bearer nope")[0] == 401
        status, body = get(url, Authorization="Bearer s3cret")
        assert status == 200
        assert b'hyperhive_reconcile_passes_total{outcome="ok",trigger="startup"} 1.0' in body
        # gzip when the scraper asks for it (Prometheus does), the same text inflated
        req = urllib.request.Request(
            url, headers={"Authorization": "Bearer s3cret", "Accept-Encoding": "gzip"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert "Accept-Encoding" in r.headers["Vary"]
            packed = r.read()
        text = gzip.decompress(packed)  # (process and request series moved since)
        assert len(packed) < len(text)
        assert b'hyperhive_reconcile_passes_total{outcome="ok",trigger="startup"} 1.0' in text
        checked = promtool("check", "metrics", stdin=text)
        assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()
        # no token_file: the controller's own 0600 token, and a rebound host name is refused
        assert made.stat().st_mode & 0o777 == 0o600
        first = made.read_text()
        assert ensure_metrics_token(made) == made and made.read_text() == first  # kept
        url = f"http://127.0.0.1:{own.port}/metrics"
        assert get(url)[0] == 401
        bearer = f"Bearer {made.read_text().strip()}"
        assert get(url, Authorization=bearer)[0] == 200
        assert get(url, Authorization=bearer, Host="evil.example")[0] == 403
    finally:
        guarded.stop()
        own.stop()
    token.write_text("\n")
    with pytest.raises(TokenFileError):
        serve_metrics(registry, "127.0.0.1", 0, token)


class _Thing:
    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response, id: int) -> None:
        resp.media = {"id": id}


def test_requests_are_counted_by_route_template_not_path() -> None:
    registry = new_registry()
    events = EventMetrics(registry)
    app = falcon.asgi.App()
    app.add_route("/things/{id:int}", _Thing())
    observe_http(events)
    try:
        listener = serve_tcp(app, "127.0.0.1", 0, name="dashboard")
    finally:
        set_request_observer(None)
    try:
        base = f"http://127.0.0.1:{listener.port}"
        for i in range(3):
            assert get(f"{base}/things/{i}")[0] == 200
        assert get(f"{base}/nowhere/{os.getpid()}")[0] == 404
    finally:
        listener.stop()
    got = samples(registry)
    series = "hyperhive_http_requests_total"
    key = f'{series}{{code="2xx",method="GET",route="/things/{{id:int}}",surface="dashboard"}}'
    assert got[key] == 3
    key = f'{series}{{code="4xx",method="GET",route="{UNMATCHED}",surface="dashboard"}}'
    assert got[key] == 1
    assert got['hyperhive_http_request_duration_seconds_count{surface="dashboard"}'] == 4
    assert not any("/things/1" in k for k in got)


def series_names(tmp_path: Path) -> set[str]:
    """Every sample name the controller's registry can expose (families × their suffixes)."""
    from controller.metrics import BrokerCollector, SwarmCollector

    registry = new_registry()
    EventMetrics(registry)
    families = list(registry.collect())
    families += list(SwarmCollector(None).describe())  # type: ignore[arg-type]
    families += list(TurnCollector(Layout.for_state(tmp_path)).describe())
    families += list(BrokerCollector(None).describe())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}


def test_the_dashboard_and_the_rules_name_only_real_series(tmp_path: Path) -> None:
    import re

    import yaml

    from tests.metrics.promserver import REPO, RULES

    known = series_names(tmp_path)
    dash = json.loads((REPO / "docs/observability/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    rules = yaml.safe_load(RULES.read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in re.findall(r"hyperhive_[a-z_]+", e)}
    assert used - known == set(), sorted(known)
    # every dashboard query is valid PromQL: promtool parses them as recording rules
    recording = {
        "groups": [
            {"name": "dashboard", "rules": [
                {"record": f"hyperhive:panel{i}", "expr": e} for i, e in enumerate(exprs)
            ]}
        ]
    }  # fmt: skip
    path = tmp_path / "panels.rules.yml"
    path.write_text(yaml.safe_dump(recording))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, (checked.stdout + checked.stderr).decode()


def test_agents_get_the_operators_otel_settings() -> None:
    from controller.metrics.tracing import agent_environ, endpoint_of

    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x=1", "PATH": "/bin", "OTEL_BSP_SCHEDULE_DELAY": "500"}
    assert endpoint_of(Config(), env) is None  # off by default
    # where and how to export, never the collector's credential (an agent runs any command)
    assert agent_environ(Config(), env) == {"OTEL_BSP_SCHEDULE_DELAY": "500"}
    secret = {
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "k=v",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/k",
        "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE": "/c",
        "OTEL_SERVICE_NAME": "hyperhive",
    }
    assert agent_environ(Config(), secret) == {}
    cfg = config_from_dict({"otel": {"endpoint": "http://127.0.0.1:4318"}})
    assert endpoint_of(cfg, env) == "http://127.0.0.1:4318"
    assert agent_environ(cfg, env)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4318"
    assert "CLAUDE_CODE_ENABLE_TELEMETRY" not in agent_environ(cfg, env)
    cc = config_from_dict({"otel": {"endpoint": "http://127.0.0.1:4318", "claude_code": True}})
    got = agent_environ(cc, {**env, "OTEL_METRICS_EXPORTER": "console"})
    assert got["CLAUDE_CODE_ENABLE_TELEMETRY"] == "1"
    assert got["OTEL_METRICS_EXPORTER"] == "console"  # the operator's own setting wins
    assert got["OTEL_LOGS_EXPORTER"] == "otlp"
    assert endpoint_of(cc, {"OTEL_SDK_DISABLED": "true"}) is None


def test_controller_traces_honour_otel_traces_exporter_none() -> None:
    """``OTEL_TRACES_EXPORTER=none`` (the SDK spec: no trace exporter) keeps the controller's
    traces off even with an endpoint configured, as it keeps the harness' off."""
    from controller.metrics.tracing import Tracing, endpoint_of
    from harness.telemetry import enabled

    cfg = config_from_dict({"otel": {"endpoint": "http://127.0.0.1:4318"}})
    env_on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    for value in ("none", "None", " NONE "):
        env = {**env_on, "OTEL_TRACES_EXPORTER": value}
        assert endpoint_of(cfg, env) is None
        assert endpoint_of(Config(), env) is None
        tracing = Tracing()
        assert not tracing.start(cfg, env) and not tracing.on
        assert not enabled(env)  # the harness agrees
    # another exporter named there does not turn the controller's traces off
    assert endpoint_of(cfg, {"OTEL_TRACES_EXPORTER": "otlp"}) == "http://127.0.0.1:4318"
    assert enabled({**env_on, "OTEL_TRACES_EXPORTER": "otlp"})
