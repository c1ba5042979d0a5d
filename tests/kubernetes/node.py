"""The stand-in's process node: a pod's container runs as a local process.

``ProcessRunner`` is a ``standin.Runner`` for the e2e story. Scheduling a pod here means
what a kubelet does with its spec, on this host:

- every volume becomes a host directory under ``root``: a ``persistentVolumeClaim`` is
  ``root/pvc/<claimName>`` (outlives the pod, like a volume), with ``subPath`` mounts as
  subdirectories made on demand (as kubelet does); a ``secret`` / ``configMap`` volume is a
  directory holding one file per key (read from the stand-in's store at start, decoded);
  an ``emptyDir`` is a fresh directory per pod;
- the container's ``env`` (plus ``envFrom`` Secrets, an optional one may be missing) is its
  environment, on top of the *image's* environment (``image_env``: what the image bakes in,
  e.g. ``PATH`` and ``HYPERHIVE_CLAUDE_BIN``); any value or ``workingDir`` that starts with a
  ``mountPath`` is rewritten to that mount's host directory;
- ``command[0]`` is looked up in ``entrypoints`` (the image's executables: e.g.
  ``hyperhive-agent`` → ``python -m harness``; others, like ``mkdir``, are this host's), and
  arguments under a mount are rewritten like the environment;
- ``initContainers`` run to completion first, in order (one that fails fails the start);
  a missing ``workingDir`` is made, as containerd does;
- the pod network is this host's loopback: ``HYPERHIVE_WEB_HOST`` is bound to 127.0.0.1.

The process gets its own session (so a stop kills its group: claude, MCP servers), and its
stdout + stderr are the pod log.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

Obj = dict[str, Any]


class ProcessContainer:
    """One run of a pod's container as a local process group; its log is a file."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path
        self._lock = threading.Lock()

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def kill(self, grace: float) -> None:
        with self._lock:
            if self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            # leftovers of the group (claude, MCP servers) that ignored SIGTERM
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


class ProcessRunner:
    """Runs pods as local processes (module docstring).

    ``lookup(kind, name)`` reads a Secret / ConfigMap from the stand-in's store (None if
    absent); ``entrypoints`` maps an image command to the argv that runs it here;
    ``image_env`` is the image's own environment."""

    def __init__(
        self,
        lookup: Callable[[str, str], Obj | None],
        entrypoints: Mapping[str, Sequence[str]],
        image_env: Mapping[str, str],
        root: Path | None = None,
    ) -> None:
        self.lookup = lookup
        self.entrypoints = dict(entrypoints)
        self.image_env = dict(image_env)
        # short: unix socket paths (the web UI's) must stay under 108 bytes
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="hhk-"))
        self.started: list[ProcessContainer] = []

    def _files(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        obj = self.lookup(kind, name)
        if obj is None:
            if optional:
                return {}
            raise RuntimeError(f'{kind.lower()} "{name}" not found')
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        return {k: v.encode() for k, v in (obj.get("data") or {}).items()}

    def _volume_dir(self, pod: Obj, vol: Obj) -> Path:
        uid = pod["metadata"]["uid"][:8]
        if "persistentVolumeClaim" in vol:
            d = self.root / "pvc" / vol["persistentVolumeClaim"]["claimName"]
        elif "secret" in vol or "configMap" in vol:
            kind = "secrets" if "secret" in vol else "configmaps"
            src = vol.get("secret") or vol.get("configMap") or {}
            name = src.get("secretName") or src.get("name") or ""
            d = self.root / "pods" / uid / vol["name"]
            d.mkdir(parents=True, exist_ok=True)
            for key, data in self._files(kind, name, bool(src.get("optional"))).items():
                (d / key).write_bytes(data)
                (d / key).chmod(0o400 if kind == "secrets" else 0o444)
            return d
        else:  # emptyDir
            d = self.root / "pods" / uid / vol["name"]
        d.mkdir(parents=True, exist_ok=True)
        return d

    def launch(self, pod: Obj) -> ProcessContainer:
        spec = pod["spec"]
        (c,) = spec["containers"]
        vols = {v["name"]: self._volume_dir(pod, v) for v in spec.get("volumes") or []}
        # init containers run to completion first, in order; one that fails fails the start
        for init in spec.get("initContainers") or []:
            argv, env, cwd = self._process(init, vols)
            done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(
                    f"init container {init['name']} exited {done.returncode}: "
                    + done.stderr.decode(errors="replace")[-500:]
                )
        argv, env, cwd = self._process(c, vols)
        log_path = self.root / "logs" / f"{pod['metadata']['name']}-{len(self.started)}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as fh:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        container = ProcessContainer(proc, log_path)
        self.started.append(container)
        return container

    def _process(self, c: Obj, vols: dict[str, Path]) -> tuple[list[str], dict[str, str], str]:
        """``(argv, env, cwd)`` of container ``c`` on this host (module docstring)."""
        mounts: list[tuple[str, Path]] = []
        for m in c.get("volumeMounts") or []:
            host = vols[m["name"]]
            if m.get("subPath"):
                host = host / m["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts.append((m["mountPath"], host))
        mounts.sort(key=lambda m: -len(m[0]))  # the longest mount path wins

        def host_path(value: str) -> str:
            for path, host in mounts:
                if value == path or value.startswith(path + "/"):
                    return str(host) + value[len(path) :]
            return value

        env = dict(self.image_env)
        for ref in c.get("envFrom") or []:
            sec = ref.get("secretRef")
            if sec is not None:
                for k, v in self._files("secrets", sec["name"], bool(sec.get("optional"))).items():
                    env[k] = v.decode()
        for e in c.get("env") or []:
            env[e["name"]] = host_path(str(e.get("value", "")))
        env["HYPERHIVE_WEB_HOST"] = "127.0.0.1"
        command = list(c.get("command") or [])
        args = [host_path(a) for a in [*command[1:], *(c.get("args") or [])]]
        argv = [*self.entrypoints.get(command[0], [command[0]]), *args]
        cwd = c.get("workingDir")
        # no workingDir: the image's (here the node's root); a missing one is made, as
        # containerd does
        cwd = host_path(cwd) if cwd else str(self.root)
        Path(cwd).mkdir(parents=True, exist_ok=True)
        return argv, env, cwd

    def stop_all(self) -> None:
        """Kill every process this node started (the test's cleanup)."""
        for c in self.started:
            c.kill(2.0)
