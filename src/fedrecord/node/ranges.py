"""Byte ranges of document streams: the one ``Range`` form a fetch takes, and its ``Content-Range``.

A fetch that resumes an interrupted transfer asks for the rest of the stream
from byte N with ``Range: bytes=N-`` (RFC 9110 section 14.1.2, one
open-ended range) and is answered 206 with ``Content-Range: bytes
N-(size-1)/size`` (section 14.4) [API-40].  A document id names one stream
that never changes, so no validator (``If-Range``, an ETag) is needed: the
requester checks the id over the whole stream once it has all of it.

Every other form -- several ranges, a suffix range (``bytes=-N``), a closed
range, another unit -- is refused with ``bad-range`` rather than ignored, so
that a requester never takes a whole stream for the rest of one [API-41].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from fedrecord.core.errors import Code, RemoteProtocolError

__all__ = ["ContentRange", "content_range", "parse_content_range", "parse_range", "range_header"]

# RFC 9110: a range unit is compared case-insensitively; the positions are decimal digits.  Nineteen
# digits hold any size a node stores ([REC-6] keeps sizes below 2^63).
_OPEN_RANGE: Final = re.compile(r"[Bb][Yy][Tt][Ee][Ss]=([0-9]{1,19})-")
_CONTENT_RANGE: Final = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19})")


def range_header(start: int) -> dict[str, str]:
    """The header field a requester sends to get a stream from byte ``start`` on."""
    return {"Range": f"bytes={start}-"}


def parse_range(values: list[str]) -> int | None:
    """The first byte asked for by the request's ``Range`` fields, or None without one.

    Args:
        values: every ``Range`` field of the request, as received.

    Raises:
        RemoteProtocolError: ``bad-range`` for anything but one field ``bytes=N-``.
    """
    if not values:
        return None
    match = _OPEN_RANGE.fullmatch(values[0]) if len(values) == 1 else None
    if match is None:
        raise RemoteProtocolError(
            Code.BAD_RANGE, "a fetch takes one range, bytes=N- (from byte N to the end)"
        )
    return int(match[1])


def content_range(start: int, size: int) -> str:
    """The ``Content-Range`` of the answer carrying bytes ``start`` to the end of a ``size``-byte stream."""
    return f"bytes {start}-{size - 1}/{size}"


@dataclass(frozen=True)
class ContentRange:
    """What a 206 answer says it carries: bytes ``start`` to the end of a ``size``-byte stream."""

    start: int
    size: int


def parse_content_range(value: str | None) -> ContentRange:
    """Read the ``Content-Range`` of a 206 answer to ``Range: bytes=N-``.

    Raises:
        RemoteProtocolError: ``malformed`` when it is absent, not ``bytes a-b/size``
            (an unknown size ``*`` included), or does not run to the end of the stream.
    """
    match = _CONTENT_RANGE.fullmatch(value or "")
    if match is None:
        raise RemoteProtocolError(Code.MALFORMED, "a partial answer carries Content-Range: bytes a-b/size")
    start, last, size = (int(group) for group in match.groups())
    if not start <= last == size - 1:
        raise RemoteProtocolError(
            Code.MALFORMED, "a partial answer runs from its start to the end of the stream"
        )
    return ContentRange(start=start, size=size)
