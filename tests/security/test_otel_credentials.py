"""The operator's OpenTelemetry collector credential never reaches an agent.

The session's controller runs with the operator's ``OTEL_EXPORTER_OTLP_HEADERS`` (and the
per-signal headers, an mTLS client key and certificate) in its environment
(``support.OPERATOR_OTEL``). An agent runs arbitrary commands, so whatever is in its
environment is the agent's: the replay reads ``/proc/<pid>/environ`` of every process of
each running harness (the bwrap sandbox, the harness python and any claude child: claude
gets the harness' environment) and looks for the credential, by name and by value. The
resource attributes, which agents may have, must arrive: they show that the controller's
``OTEL_*`` settings do reach the harness, only not the secret ones.
"""

from __future__ import annotations

import psutil

from tests.security.support import COLLECTOR_SECRET, Hive, Tally

OTEL = "OpenTelemetry: the collector's credential in an agent's environment"


def _environs(top: int) -> list[dict[str, str]]:
    proc = psutil.Process(top)
    out = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            out.append(p.environ())
        except psutil.Error:
            continue
    return out


def test_the_collector_credential_never_reaches_an_agent(hive: Hive, tally: Tally) -> None:
    procs = hive.harness_procs()
    for agent in ("manager", "alice", "bob"):
        assert procs.get(agent), f"{agent} is not running: {procs}"
        envs = [env for top in procs[agent] for env in _environs(top)]
        assert envs, agent
        leaked = sorted(
            {
                k
                for env in envs
                for k, v in env.items()
                if COLLECTOR_SECRET in v
                or k.endswith(("_HEADERS", "_CLIENT_KEY", "_CLIENT_CERTIFICATE"))
            }
        )
        tally.record(OTEL, f"{agent}'s processes ({len(envs)})", not leaked, ", ".join(leaked))
        harness = [env for env in envs if env.get("HYPERHIVE_AGENT") == agent]
        assert any(
            env.get("OTEL_RESOURCE_ATTRIBUTES") == "deployment.environment=sec-replay"
            for env in harness
        ), f"{agent}: the allowed OTEL settings did not arrive"
    tally.assert_refused(OTEL)
