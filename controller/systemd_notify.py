"""systemd service notifications: readiness, watchdog, status (sd_notify(3)).

Under the NixOS module the controller runs as a ``Type=notify`` unit with
``WatchdogSec=``. systemd then passes two things in the environment:

- ``NOTIFY_SOCKET``: the ``AF_UNIX`` datagram socket to send state changes to,
  a path or, with a leading ``@``, an abstract socket name (sd_notify(3)).
- ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``): the watchdog timeout; the service
  must send ``WATCHDOG=1`` more often than that, and sd_watchdog_enabled(3)
  advises every half of it.

The controller sends ``READY=1`` once its sockets listen and the first
reconcile pass is done, ``WATCHDOG=1`` while its loop lives (``Watchdog`` below
pings only while the loop keeps beating), ``STATUS=`` with ``status_line()``,
and ``STOPPING=1`` when it shuts down. Outside systemd (``NOTIFY_SOCKET``
unset) every call is a no-op, so the same code runs on a laptop and in tests.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping

import sdnotify  # type: ignore[import-untyped,unused-ignore]

# Variables systemd sets for the service; popped from the environment with
# ``unset_environment=True`` so child processes do not inherit them
# (sd_notify(3): "unset_environment").
_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def status_line(ready: int, total: int, pending: int) -> str:
    """One-line ``STATUS=`` summary: agents ready out of total, pending proposals.

    >>> status_line(2, 3, 1)
    '2/3 agents ready, 1 pending proposal'
    >>> status_line(0, 0, 0)
    '0/0 agents ready, 0 pending proposals'
    """
    noun = "proposal" if pending == 1 else "proposals"
    return f"{ready}/{total} agents ready, {pending} pending {noun}"


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or ``None`` if no watchdog is asked for.

    sd_watchdog_enabled(3): the watchdog is on when ``WATCHDOG_USEC`` is a positive
    integer and ``WATCHDOG_PID`` is unset or equal to our PID; ping at half the
    timeout.
    """
    usec_text = env.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


class SystemdNotify:
    """Typed wrapper over ``sdnotify.SystemdNotifier`` (sd_notify(3)).

    Every method sends one datagram to ``NOTIFY_SOCKET``, or does nothing when
    the variable is unset (not started by systemd, or not ``Type=notify``).
    Send errors are swallowed, as sd_notify(3) callers are told to: a failed
    notification must never take the service down.

    ``unset_environment=True`` removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and
    ``WATCHDOG_PID`` from ``os.environ`` after reading them, so processes the
    service starts (nixos-container, git, local-runtime harnesses) do not talk
    to the service's notification socket. Make one instance at start-up then.
    """

    def __init__(self, *, unset_environment: bool = False) -> None:
        self._socket_path = os.environ.get("NOTIFY_SOCKET") or None
        self._watchdog_interval = _watchdog_interval(os.environ, os.getpid())
        # sdnotify reads NOTIFY_SOCKET itself when constructed.
        self._notifier: sdnotify.SystemdNotifier | None = (
            sdnotify.SystemdNotifier() if self._socket_path else None
        )
        if unset_environment:
            for name in _NOTIFY_VARS:
                os.environ.pop(name, None)

    @property
    def enabled(self) -> bool:
        """True when ``NOTIFY_SOCKET`` was set: notifications go somewhere."""
        return self._notifier is not None

    @property
    def socket_path(self) -> str | None:
        """``NOTIFY_SOCKET`` as systemd set it (``@name`` for an abstract socket)."""
        return self._socket_path

    def notify(self, state: str) -> None:
        """Send raw ``state`` (newline-separated ``VAR=value`` assignments)."""
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self) -> None:
        """``READY=1``: start-up finished (for a ``Type=notify`` unit, it is now active)."""
        self.notify("READY=1")

    def watchdog(self) -> None:
        """``WATCHDOG=1``: the service is alive; resets the ``WatchdogSec=`` timer."""
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """``STATUS=<text>``: free-form one-line status shown by ``systemctl status``.

        Newlines would start a new assignment, so they become spaces.
        """
        one_line = " ".join(text.splitlines())
        self.notify(f"STATUS={one_line}")

    def stopping(self) -> None:
        """``STOPPING=1``: the service began shutting down."""
        self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """``EXTEND_TIMEOUT_USEC=``: ask for ``seconds`` more before the start (or stop)
        timeout fires, e.g. while the first reconcile pass builds a container."""
        usec = max(0, int(seconds * 1_000_000))
        self.notify(f"EXTEND_TIMEOUT_USEC={usec}")

    def watchdog_interval(self) -> float | None:
        """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, per
        sd_watchdog_enabled(3); ``None`` if the unit has no watchdog (or it is
        meant for another PID)."""
        return self._watchdog_interval


class Watchdog:
    """Pings ``WATCHDOG=1`` from a daemon thread, but only while the loop lives.

    The controller's loop calls ``beat()`` on every iteration. Every
    ``interval`` seconds the thread sends ``WATCHDOG=1`` if the last beat is at
    most ``stale_after`` seconds old; a loop that hangs stops the pings, and
    systemd restarts the service after ``WatchdogSec=``. Long work (a container
    build) belongs off the loop, or the loop must keep beating through it.

    Without a watchdog (``notify.watchdog_interval()`` is ``None`` and no
    ``interval`` is given) ``start()`` does nothing.
    """

    def __init__(
        self,
        notify: SystemdNotify,
        *,
        stale_after: float,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._notify = notify
        self._stale_after = stale_after
        self._interval = interval if interval is not None else notify.watchdog_interval()
        self._clock = clock
        self._last_beat = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float | None:
        """Seconds between checks (and pings); ``None`` when there is no watchdog."""
        return self._interval

    def beat(self) -> None:
        """The loop is alive: record it."""
        with self._lock:
            self._last_beat = self._clock()

    def alive(self) -> bool:
        """True if the last ``beat()`` is no older than ``stale_after`` seconds."""
        with self._lock:
            return self._clock() - self._last_beat <= self._stale_after

    def check(self) -> bool:
        """Ping ``WATCHDOG=1`` if the loop is alive; return whether it pinged."""
        if self.alive():
            self._notify.watchdog()
            return True
        return False

    def start(self) -> None:
        """Start the pinging thread (idempotent; no-op without a watchdog)."""
        if self._interval is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        interval = self._interval
        assert interval is not None
        while not self._stop.wait(interval):
            self.check()
