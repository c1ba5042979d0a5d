"""Wake-ups: who is parked on which inbox, and waking them after a commit.

A parked receiver reads its inbox's *sequence* before it looks for a message, then parks
until the sequence moves (``notify``), so a change between the look and the park is never
missed. Threads park on a ``threading.Condition`` per recipient (a send to ``alice`` never
wakes the 49 other parked agents), coroutines on a future resolved on their own loop.
``last_id`` (the newest message id) wakes the followers of every message (SSE, ``--follow``).

A coroutine receive parks with a ``Taker``: a send on the same loop into an empty inbox may
``take`` it and hand it the message as the message is stored (``Sending.send``), instead of
waking it to claim the message in a second transaction.

``Wakeups`` is the interface the semantics use; ``LocalWakeups`` serves one process. A store
shared by several processes (PostgreSQL) feeds the changes other processes committed into the
same ``notify`` (``LISTEN``), so the semantics never know where a change came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from schemas.wire import Message

_Waiter = tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]


class Taker:
    """A coroutine receive parked on an inbox, as a send may hand it a message.

    ``lease_seconds`` is the receive's lease (None: at-most-once), ``gone`` its
    ``abandoned`` event (a receive whose client left takes nothing). ``park`` fills in
    ``loop`` and ``fut``; a send that ``take`` s it stores the message already delivered
    (``model.Claim``) and, once committed, calls ``hand(msg)``, or ``give_back()`` when
    the send failed (the receive then looks at its inbox again, as after any wake-up).
    """

    __slots__ = ("fut", "gone", "lease_seconds", "loop", "msg")

    def __init__(self, lease_seconds: int | None, gone: asyncio.Event | None) -> None:
        self.lease_seconds = lease_seconds
        self.gone = gone
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fut: asyncio.Future[None] | None = None
        self.msg: Message | None = None

    def hand(self, msg: Message) -> None:
        """Give the receive ``msg`` (on its loop's thread, after the commit)."""
        self.msg = msg
        self.give_back()

    def give_back(self) -> None:
        """Wake the receive without a message."""
        if self.fut is not None:
            _wake_future(self.fut)


class Wakeups(Protocol):
    """Parking and waking receivers and followers (see the module docstring).

    Every method is thread-safe; ``park`` needs a running event loop.
    """

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        ...

    def close(self) -> None:
        """Wake everything parked; later waits return at once."""
        ...

    def notify(self, recipients: Sequence[str], last_id: int | None = None) -> None:
        """After a commit: wake ``recipients``' parked receivers and, when ``last_id`` is
        newer than any seen, every follower."""
        ...

    def notify_everyone(self, last_id: int | None = None) -> None:
        """Wake every parked receiver (a change whose recipients are not known)."""
        ...

    def seq(self, recipient: str) -> int | None:
        """``recipient``'s sequence now (moves on every change to its inbox); None once closed."""
        ...

    def wait(self, recipient: str, seq: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds while ``recipient``'s sequence is ``seq``; True
        when it moved or the wake-ups closed."""
        ...

    def last_id(self) -> int:
        """The newest message id seen."""
        ...

    def wait_new(self, since_id: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until ``last_id() > since_id``; False at the
        timeout or once closed."""
        ...

    def park(
        self, recipient: str | None, seq: int, taker: Taker | None = None
    ) -> asyncio.Future[None] | None:
        """A future resolved on the next change for ``recipient`` (None: the next new
        message); None instead when that change already happened (``seq`` is stale: the
        recipient's sequence, or ``last_id()`` for None) or the wake-ups are closed.
        With ``taker`` (a receive parked on ``recipient``) a send may ``take`` it."""
        ...

    def take(self, recipient: str) -> Taker | None:
        """The longest-parked ``Taker`` of ``recipient`` on the running loop whose client
        is still there, no longer parked (a commit's ``notify`` will not wake it), or None
        (also when no loop runs in this thread)."""
        ...

    def unpark(self, recipient: str | None, fut: asyncio.Future[None]) -> None:
        """Forget ``fut`` (parked with ``park``) if it is still parked."""
        ...


def _wake_future(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def wake_async(waiters: Sequence[_Waiter]) -> None:
    """Resolve parked asyncio waiters from any thread (their loop runs the resolution).

    On the waiter's own loop thread (a send over the HTTP API) the future is resolved
    at once: no self-pipe write and wake-up of the loop, and the receiver's task is
    ready before the sender's handler goes on."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for loop, fut in waiters:
        if loop is here:
            _wake_future(fut)
            continue
        # a closed loop raises RuntimeError: nobody is waiting there any more
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_wake_future, fut)


async def park_async(
    fut: asyncio.Future[None], timeout: float, abandoned: asyncio.Event | None
) -> None:
    """Wait until ``fut`` resolves, ``timeout`` seconds pass or ``abandoned`` is set.

    Awaits ``fut`` itself (the timeout and ``abandoned`` resolve it), so a wake costs the
    parked task one step of the loop, not the several of ``asyncio.wait``."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout, _wake_future, fut)
    watch: asyncio.Future[Any] | None = None
    on_gone: Callable[[], None] | None = None
    # hivehttp's ``Gone`` event calls back when set: no watcher task per park (duck-typed:
    # the broker does not import the HTTP server)
    add = getattr(abandoned, "add_callback", None)
    if add is not None:
        on_gone = functools.partial(_wake_future, fut)
        add(on_gone)
    elif abandoned is not None:
        watch = asyncio.ensure_future(abandoned.wait())
        watch.add_done_callback(lambda _: _wake_future(fut))
    try:
        await fut
    finally:
        timer.cancel()
        if on_gone is not None:
            abandoned.remove_callback(on_gone)  # type: ignore[union-attr]
        if watch is not None:
            watch.cancel()


class LocalWakeups:
    """``Wakeups`` within one process: a condition per recipient and asyncio futures,
    behind one lock. ``last_id`` starts at the store's newest id."""

    def __init__(self, last_id: int = 0) -> None:
        self._lock = threading.Lock()
        self._conds: dict[str, threading.Condition] = {}
        self._seq: dict[str, int] = {}
        # bumped by notify_everyone: every recipient's sequence moves at once
        self._epoch = 0
        self._any = threading.Condition(self._lock)
        self._parked: dict[str, list[_Waiter]] = {}
        self._parked_any: list[_Waiter] = []
        self._takers: dict[str, list[Taker]] = {}
        self._last_id = last_id
        self._closed = False

    @property
    def closed(self) -> bool:
        """True after ``close()``."""
        return self._closed

    def close(self) -> None:
        """Wake everything parked; later waits return at once."""
        with self._lock:
            self._closed = True
            for cond in self._conds.values():
                cond.notify_all()
            self._any.notify_all()
            woken = [w for ws in self._parked.values() for w in ws] + self._parked_any
            self._parked, self._parked_any, self._takers = {}, [], {}
        wake_async(woken)

    def notify(self, recipients: Sequence[str], last_id: int | None = None) -> None:
        """After a commit: wake ``recipients``' parked receivers and, on a new id, every
        follower."""
        woken: list[_Waiter] = []
        with self._lock:
            for r in recipients:
                self._seq[r] = self._seq.get(r, 0) + 1
                cond = self._conds.get(r)
                if cond is not None:
                    cond.notify_all()
                woken += self._parked.pop(r, ())
                self._takers.pop(r, None)
            woken += self._new_id(last_id)
        if woken:
            wake_async(woken)

    def notify_everyone(self, last_id: int | None = None) -> None:
        """Wake every parked receiver and, on a new id, every follower."""
        with self._lock:
            self._epoch += 1
            for cond in self._conds.values():
                cond.notify_all()
            woken = [w for ws in self._parked.values() for w in ws]
            self._parked, self._takers = {}, {}
            woken += self._new_id(last_id)
        wake_async(woken)

    def _new_id(self, last_id: int | None) -> list[_Waiter]:
        """Record ``last_id``; the followers to wake (holding the lock)."""
        if last_id is None or last_id <= self._last_id:
            return []
        self._last_id = last_id
        self._any.notify_all()
        woken, self._parked_any = self._parked_any, []
        return woken

    def _seq_of(self, recipient: str) -> int:
        return self._seq.get(recipient, 0) + self._epoch

    def seq(self, recipient: str) -> int | None:
        """``recipient``'s sequence now; None once closed."""
        with self._lock:
            return None if self._closed else self._seq_of(recipient)

    def wait(self, recipient: str, seq: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds while ``recipient``'s sequence is ``seq``; True
        when it moved or the wake-ups closed."""
        with self._lock:
            cond = self._conds.get(recipient)
            if cond is None:
                cond = self._conds[recipient] = threading.Condition(self._lock)
            if self._seq_of(recipient) == seq and not self._closed and timeout > 0:
                cond.wait(timeout)
            return self._seq_of(recipient) != seq or self._closed

    def last_id(self) -> int:
        """The newest message id seen."""
        with self._lock:
            return self._last_id

    def wait_new(self, since_id: int, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until ``last_id() > since_id``; False at the
        timeout or once closed."""
        with self._lock:
            if self._last_id <= since_id and not self._closed and timeout > 0:
                self._any.wait_for(lambda: self._last_id > since_id or self._closed, timeout)
            return self._last_id > since_id and not self._closed

    def park(
        self, recipient: str | None, seq: int, taker: Taker | None = None
    ) -> asyncio.Future[None] | None:
        """A future resolved on the next change for ``recipient`` (None: the next new
        message); None when ``seq`` is stale or the wake-ups are closed. ``taker``: a
        receive a send may hand its message to (``take``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._closed:
                return None
            if recipient is None:
                if self._last_id != seq:
                    return None
                self._parked_any.append((loop, fut))
            else:
                if self._seq_of(recipient) != seq:
                    return None
                self._parked.setdefault(recipient, []).append((loop, fut))
                if taker is not None:
                    taker.loop, taker.fut = loop, fut
                    self._takers.setdefault(recipient, []).append(taker)
        return fut

    def take(self, recipient: str) -> Taker | None:
        """The longest-parked ``Taker`` of ``recipient`` on the running loop, unparked;
        None when there is none (or no loop runs in this thread)."""
        if recipient not in self._takers:  # a lock-free look first: mostly nobody is parked
            return None
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            return None  # a thread's send: its waiters' loops resolve them, not this thread
        with self._lock:
            takers = self._takers.get(recipient, [])
            for i, t in enumerate(takers):
                if t.loop is not here or t.fut is None or t.fut.done():
                    continue
                if t.gone is not None and t.gone.is_set():
                    continue
                del takers[i]
                if not takers:
                    del self._takers[recipient]
                parked = self._parked.get(recipient)
                if parked is not None:
                    self._drop(parked, t.fut)
                    if not parked:
                        del self._parked[recipient]
                return t
        return None

    @staticmethod
    def _drop(waiters: list[_Waiter], fut: asyncio.Future[None]) -> None:
        for i, (_, f) in enumerate(waiters):
            if f is fut:
                del waiters[i]
                return

    def unpark(self, recipient: str | None, fut: asyncio.Future[None]) -> None:
        """Forget ``fut`` if it is still parked."""
        with self._lock:
            waiters = self._parked_any if recipient is None else self._parked.get(recipient, [])
            self._drop(waiters, fut)
            if recipient is not None:
                if not waiters:
                    self._parked.pop(recipient, None)
                takers = self._takers.get(recipient)
                if takers is not None:
                    for i, t in enumerate(takers):
                        if t.fut is fut:
                            del takers[i]
                            break
                    if not takers:
                        del self._takers[recipient]
