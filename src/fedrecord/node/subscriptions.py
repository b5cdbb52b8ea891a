"""Where a clinic follows the event streams of its patients' nodes (spec section 15.14, [API-35]).

Theory of operation.  One task per connected patient holds ``POST
/v0/events`` open and applies each ``state`` event exactly as the answer of a
poll is applied (:meth:`ClinicNode.apply_state`): every record verified, a
rolled-back head refused, revocations kept and the copies they revoke
destroyed, tombstones attested -- and the attestations sent at once rather
than at the next poll.  An event that fails its checks is skipped; a stream
that fails or ends is opened again after a backoff (1 s, doubling up to
60 s, back to 1 s once an event arrived).  New connections are followed
within :data:`RESCAN_INTERVAL` seconds.

Polling every ``poll_interval`` goes on beside the streams (``runner.duties``):
it covers a stream that is down or withheld, and only a polled answer, signed
and bound to the clinic's own request, refreshes the head's freshness
([HEAD-4]).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from fedrecord.core.errors import FedrecordError, RemoteProtocolError
from fedrecord.http.event_stream import ServerEvent

from .client import PeerUnreachable, unb64
from .clinic import ClinicNode
from .wire import MAX_BODY, api_url, decode_body

__all__ = ["RECONNECT_MAX", "RECONNECT_MIN", "RESCAN_INTERVAL", "StateSubscriptions"]

log = logging.getLogger("fedrecord.node")

RECONNECT_MIN: Final = 1.0
RECONNECT_MAX: Final = 60.0
RESCAN_INTERVAL: Final = 2.0
# An event's data is the base64url of a body of at most MAX_BODY bytes, plus its field names.
MAX_EVENT: Final = MAX_BODY * 4 // 3 + 64


class StateSubscriptions:
    """The event streams one clinic node follows, one per connected patient."""

    def __init__(self, clinic: ClinicNode, *, rescan_interval: float = RESCAN_INTERVAL) -> None:
        self.clinic = clinic
        self._rescan_interval = rescan_interval
        self._following: dict[str, asyncio.Task[None]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Follow every connected patient until ``stop`` is set; then end every stream."""
        try:
            while not stop.is_set():
                try:
                    for connection in await self.clinic.store.connections():
                        task = self._following.get(connection.patient)
                        if task is None or task.done():
                            self._following[connection.patient] = asyncio.create_task(
                                self.follow(connection.patient), name=f"fedrecord-follow-{connection.patient}"
                            )
                except Exception:
                    log.exception("listing the connections to follow")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._rescan_interval)
        finally:
            tasks = list(self._following.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._following.clear()

    async def follow(self, patient: str) -> None:
        """Hold ``patient``'s event stream open and apply its events, reconnecting with backoff, for ever."""
        delay = RECONNECT_MIN
        failing = False
        while True:
            opened = False
            try:
                connection = await self.clinic.store.connection(patient)
                if connection is None:
                    return
                stream = self.clinic.client.events(
                    api_url(connection.endpoint, "/v0/events"),
                    expected_signer=patient,
                    max_event=MAX_EVENT,
                    **await self.clinic.held_head(patient),
                )
                # Closed as soon as this block is left, whatever way: the connection is not kept waiting.
                async with contextlib.aclosing(stream):
                    async for event in stream:
                        if not opened:
                            opened, delay, failing = True, RECONNECT_MIN, False
                            log.info("following the event stream of %s", patient)
                        await self._apply(patient, event)
                log.info("the event stream of %s ended", patient)
            except (FedrecordError, PeerUnreachable) as exc:
                # A patient's node away is normal (US-11): said once, until its stream opens again.
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "the event stream of %s: %s; again in %.0f s", patient, exc, delay)
                failing = True
            except Exception:
                log.exception("the event stream of %s; again in %.0f s", patient, delay)
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _apply(self, patient: str, event: ServerEvent) -> None:
        if event.name != "state":
            return  # a kind of event of a later version
        try:
            data = unb64(event.data)
        except ValueError:
            log.warning("an event of %s is not base64url; skipped", patient)
            return
        try:
            answer = decode_body(data, max_size=MAX_BODY)
            result = await self.clinic.apply_state(patient, answer, now=int(time.time()), polled=False)
        except RemoteProtocolError as exc:
            # A bad or rolled-back event changes nothing; the stream and the polls go on.
            log.warning("an event of %s was refused (%s); skipped", patient, exc)
            return
        if result["attested"]:
            # The patient is waiting for these confirmations: send them now, not at the next poll.
            await self.clinic.flush_outbox()
