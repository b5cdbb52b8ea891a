"""Resuming a fetch cut short: what a clinic keeps beside the bytes, and where it asks to restart.

A clinic's fetch streams the ciphertext into a partial download
(:mod:`fedrecord.storage.partial`) and keeps beside it, before the first
byte, a :class:`KeptStream`: the patient, the length of the whole stream and
the key wrap the bytes came with.  The next fetch of that document asks for
the rest with ``Range: bytes=N-`` [API-42]: N is the number of bytes held,
except that a stream held whole is asked for from its last byte, so that every
read still goes through the patient's decision and leaves its receipt.

The key wrap is kept so that the copy can be traced to the grant it was
fetched under: a clinic destroys the partial downloads whose grant is no
longer live when it polls the patient's state [API-43].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fedrecord.core import KeyWrap, Signed, cbor, open_record
from fedrecord.core.errors import Code, FedrecordError, RemoteProtocolError
from fedrecord.storage.partial import PartialDownload

from .client import Download
from .ranges import parse_content_range
from .wire import MAX_DOCUMENT

__all__ = ["RESTARTABLE", "KeptStream", "resume_point", "stream_span"]

RESTARTABLE: Final = frozenset({Code.MALFORMED, Code.TOO_LARGE, Code.BAD_RANGE})
"""Refusals of a resumed fetch that say the kept bytes cannot be completed: start again from byte 0."""
_VERSION: Final = 0


@dataclass(frozen=True)
class KeptStream:
    """What a clinic keeps beside a partial download."""

    patient: str
    size: int
    wrap: Signed[KeyWrap]

    def encode(self) -> bytes:
        return cbor.encode(
            {"v": _VERSION, "patient": self.patient, "size": self.size, "wrap": self.wrap.encoded}
        )

    @classmethod
    def decode(cls, data: bytes | None) -> KeptStream | None:
        """What was kept, or None when nothing readable was (the bytes are then not resumed)."""
        if data is None:
            return None
        try:
            fields = cbor.decode(data)
            kept = cls(
                patient=fields["patient"], size=fields["size"], wrap=open_record(fields["wrap"], KeyWrap)
            )
        except (FedrecordError, KeyError, TypeError):
            return None
        if fields.get("v") != _VERSION or type(kept.patient) is not str or type(kept.size) is not int:
            return None
        return kept


def resume_point(partial: PartialDownload | None, patient: str) -> int:
    """The byte to ask a fetch from: what is held of the stream, or 0 when nothing usable is."""
    if partial is None or not partial.held:
        return 0
    kept = KeptStream.decode(partial.meta)
    if kept is None or kept.patient != patient or kept.size <= 0:
        return 0
    # A stream held whole is asked for from its last byte: a range starting at its end is refused.
    return min(partial.held, kept.size - 1)


def stream_span(answer: Download, asked: int) -> tuple[int, int]:
    """The first byte a fetch answer carries and the length of the whole stream [API-40].

    Args:
        answer: a 200 (the whole stream) or 206 (the rest from ``asked``) answer.
        asked: the first byte the request asked for (0 without a range).

    Raises:
        RemoteProtocolError: ``malformed`` for another status, a missing or
            inconsistent ``Content-Length``, or a ``Content-Range`` that does
            not start at ``asked``; ``too-large`` for a stream over the cap.
    """
    length = answer.headers.get("Content-Length", "")
    if answer.status not in (200, 206) or not length.isdigit():
        raise RemoteProtocolError(Code.MALFORMED, "a fetch answer is 200 or 206 with its Content-Length")
    first, size = 0, int(length)
    if answer.status == 206:
        span = parse_content_range(answer.headers.get("Content-Range"))
        if span.start != asked or span.size - span.start != size:
            raise RemoteProtocolError(
                Code.MALFORMED, "the partial answer is not the rest of the stream asked for"
            )
        first, size = span.start, span.size
    if size > MAX_DOCUMENT:
        raise RemoteProtocolError(Code.TOO_LARGE, f"documents are capped at {MAX_DOCUMENT} bytes")
    return first, size
