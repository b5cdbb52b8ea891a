"""Where the patient's node tells its open event streams that its state changed (spec section 15.14).

Theory of operation.  Each open ``POST /v0/events`` stream holds one
:class:`Subscription`: the requester it serves, the state mark its last event
was read at, and a flag, "the state may have changed", its handler waits on.
The handler reads the mark *before* it reads the state it sends, so a change
committed in between shows as a newer mark and is sent next.

Two things raise the flags.  A commit made by this process: ``PatientNode``
calls :meth:`StateFeed.poke` after each commit that changes a state answer.
And a watch that, every :data:`WATCH_INTERVAL` seconds while a stream is
open, reads :meth:`NodeStore.state_mark` -- which also moves when another
process commits to the same database, as ``fedrecord revoke`` does from the
command line -- and raises the flag of every subscription that was sent an
older mark.  Raising a raised flag does nothing: a subscription has at most
one change pending, and its handler then sends the whole state as it is, so a
burst of changes costs one event and nothing piles up for a slow reader (the
handler drops a reader that does not take an event in time instead).

Streams are bounded: :data:`MAX_PER_REQUESTER` per requester and
:data:`MAX_SUBSCRIPTIONS` in all; one more is refused with ``too-many``
([API-34]), and the requester keeps polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from fedrecord.core.errors import Code, RemoteProtocolError

from .store import NodeStore

__all__ = ["MAX_PER_REQUESTER", "MAX_SUBSCRIPTIONS", "WATCH_INTERVAL", "StateFeed", "Subscription"]

log = logging.getLogger("fedrecord.node")

#: Seconds between two reads of the state mark while a stream is open: what another process commits
#: (a revocation from the command line) is pushed within this, plus one event's sending.
WATCH_INTERVAL: Final = 0.25
#: Open event streams one requester may hold (a reconnecting node's old stream may linger a moment).
MAX_PER_REQUESTER: Final = 4
#: Open event streams in all.
MAX_SUBSCRIPTIONS: Final = 256

Mark = tuple[int, int]


@dataclass(eq=False)
class Subscription:
    """One open event stream: whom it serves, what it was last sent, and whether to send again."""

    requester: str
    #: The state mark read before the state its last event carried; ``None`` before the first.
    seen: Mark | None = None
    #: Set when the node shuts down: the handler ends the stream.
    closed: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        self._changed.set()

    async def changed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a change (true) or none (false); a change is taken once."""
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        self._changed.clear()
        return True


class StateFeed:
    """The open event streams of a patient's node, and the watch that wakes them."""

    def __init__(
        self,
        store: NodeStore,
        *,
        max_per_requester: int = MAX_PER_REQUESTER,
        max_subscriptions: int = MAX_SUBSCRIPTIONS,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self._store = store
        self._max_per_requester = max_per_requester
        self._max_subscriptions = max_subscriptions
        self._watch_interval = watch_interval
        self._subscriptions: set[Subscription] = set()
        self._poked = asyncio.Event()
        self._watch: asyncio.Task[None] | None = None
        self._closed = False

    def count(self, requester: str | None = None) -> int:
        """Open streams, of ``requester`` or in all."""
        return sum(1 for s in self._subscriptions if requester is None or s.requester == requester)

    async def mark(self) -> Mark:
        """The state mark now; read it before reading the state an event carries."""
        return await self._store.state_mark()

    def poke(self) -> None:
        """Something this process committed may have changed the state: check now, not at the next tick."""
        self._poked.set()

    @contextlib.contextmanager
    def subscribe(self, requester: str) -> Iterator[Subscription]:
        """Hold one open stream for ``requester`` for the duration of the block.

        Raises:
            RemoteProtocolError: ``too-many`` when the requester, or the node,
                holds as many streams as it may, or the node is shutting down.
        """
        if self._closed:
            raise RemoteProtocolError(Code.TOO_MANY, "the node is shutting down")
        if self.count(requester) >= self._max_per_requester:
            raise RemoteProtocolError(
                Code.TOO_MANY, f"at most {self._max_per_requester} event streams per node; poll meanwhile"
            )
        if len(self._subscriptions) >= self._max_subscriptions:
            raise RemoteProtocolError(
                Code.TOO_MANY, "this node serves no more event streams now; poll meanwhile"
            )
        subscription = Subscription(requester)
        self._subscriptions.add(subscription)
        if self._watch is None or self._watch.done():
            self._watch = asyncio.create_task(self._watching(), name="fedrecord-state-watch")
        try:
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            if not self._subscriptions:
                self.poke()  # the watch sees it has no one left to watch for, and ends

    async def close(self) -> None:
        """End every stream (the node is shutting down) and the watch."""
        self._closed = True
        for subscription in self._subscriptions:
            subscription.closed = True
            subscription.notify()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch

    async def _watching(self) -> None:
        while self._subscriptions:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._watch_interval):
                    await self._poked.wait()
            self._poked.clear()
            try:
                mark = await self._store.state_mark()
            except Exception:
                # A busy or failing database must not end the watch: the streams would go quiet.
                log.exception("reading the state mark")
                continue
            for subscription in self._subscriptions:
                if subscription.seen != mark:
                    subscription.notify()
