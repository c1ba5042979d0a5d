"""hyperhive's HTTP core, shared by the controller and the harness.

One asyncio loop serves every listener of a process (``server``); every
request passes the checks of its listener's ``Policy`` first (``guard``);
every JSON body is parsed by ``parse_json_object`` (``jsonbody``).
"""

from hivehttp.guard import (
    LOOPBACK_HOSTS,
    Policy,
    Refusal,
    browser_policy,
    disconnected,
    guarded,
)
from hivehttp.jsonbody import BadJson, parse_json_object
from hivehttp.observe import UNMATCHED, RequestObserver, RequestSeen, set_request_observer
from hivehttp.server import (
    TCP_LIMITS,
    UNIX_LIMITS,
    HttpCore,
    Limits,
    Listener,
    SocketInUse,
    adopt_unix,
    default_core,
    run_blocking,
    serve_tcp,
    serve_unix,
    tls_server_context,
)

__all__ = [
    "LOOPBACK_HOSTS",
    "TCP_LIMITS",
    "UNIX_LIMITS",
    "UNMATCHED",
    "BadJson",
    "HttpCore",
    "Limits",
    "Listener",
    "Policy",
    "Refusal",
    "RequestObserver",
    "RequestSeen",
    "SocketInUse",
    "adopt_unix",
    "browser_policy",
    "default_core",
    "disconnected",
    "guarded",
    "parse_json_object",
    "run_blocking",
    "serve_tcp",
    "serve_unix",
    "set_request_observer",
    "tls_server_context",
]
