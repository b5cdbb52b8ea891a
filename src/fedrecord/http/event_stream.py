"""Server-sent events framing (``text/event-stream``), the subset the node API uses (spec section 15.14).

Pure: bytes in, events out; events in, bytes out.  The aiohttp adapters
(``fedrecord.node.server`` writes, ``fedrecord.node.client`` reads) only move
the bytes.

Theory of operation.  An event stream is UTF-8 text made of lines; a blank
line ends an event; ``event:`` names it, ``data:`` lines carry its data
(joined with ``"\\n"``), a line that starts with ``:`` is a comment that
readers skip (nodes send one as a keep-alive, so that proxies do not close an
idle stream).  This reader follows the WHATWG processing model for those
fields, ignores ``id:``, ``retry:`` and unknown fields, accepts ``\\n`` and
``\\r\\n`` line ends (a node sends ``\\n``; a lone ``\\r`` is not a line end
here), and bounds what it buffers: a stream that grows one line or one event
past ``max_event`` bytes is refused with ``too-large``, so a peer cannot make
the reader hold an unbounded event in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError

__all__ = ["EVENT_STREAM_TYPE", "KEEP_ALIVE", "EventStreamReader", "ServerEvent", "encode_event"]

EVENT_STREAM_TYPE: Final = "text/event-stream"
#: A comment line: readers skip it; it only keeps an idle connection open.
KEEP_ALIVE: Final = b": keep-alive\n\n"


@dataclass(frozen=True, kw_only=True)
class ServerEvent:
    """One dispatched event: its name (``message`` when unnamed) and its data."""

    name: str
    data: str


def encode_event(name: str, data: str) -> bytes:
    """One event as it goes on the wire: ``event: name``, ``data: data``, a blank line.

    Raises:
        LocalProtocolError: ``malformed`` when the name or the data holds a
            line break (they would end the field early) or the name is empty.
    """
    for value in (name, data):
        if "\n" in value or "\r" in value:
            raise LocalProtocolError(Code.MALFORMED, "an event name or data line holds no line break")
    if not name:
        raise LocalProtocolError(Code.MALFORMED, "an event has a name")
    return f"event: {name}\ndata: {data}\n\n".encode()


class EventStreamReader:
    """Turns the bytes of an event stream, in any pieces, into :class:`ServerEvent`\\ s."""

    def __init__(self, *, max_event: int) -> None:
        self._max_event = max_event
        self._buffer = bytearray()
        self._name = ""
        self._data: list[str] = []
        self._size = 0  # bytes of the event being read, its lines so far

    def feed(self, chunk: bytes) -> list[ServerEvent]:
        """The events completed by ``chunk``, in order.

        Raises:
            RemoteProtocolError: ``too-large`` for a line or an event over
                ``max_event`` bytes; ``invalid-utf8`` for a line that is not UTF-8.
        """
        self._buffer += chunk
        events: list[ServerEvent] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) + self._size > self._max_event:
                    raise RemoteProtocolError(Code.TOO_LARGE, f"events are capped at {self._max_event} bytes")
                return events
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._size += end + 1
            if self._size > self._max_event:
                raise RemoteProtocolError(Code.TOO_LARGE, f"events are capped at {self._max_event} bytes")
            event = self._line(raw.removesuffix(b"\r"))
            if event is not None:
                events.append(event)

    def _line(self, raw: bytes) -> ServerEvent | None:
        if not raw:
            return self._dispatch()
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(Code.INVALID_UTF8, "an event stream is UTF-8 text") from None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None

    def _dispatch(self) -> ServerEvent | None:
        name, data = self._name or "message", self._data
        self._name, self._data, self._size = "", [], 0
        # WHATWG: an event without data is not dispatched (a comment-only block, a lone name).
        return ServerEvent(name=name, data="\n".join(data)) if data else None
