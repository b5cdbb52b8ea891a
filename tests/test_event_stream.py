"""The event-stream framing of ``POST /v0/events`` (spec section 15.14): what a node writes, what a reader takes."""

from __future__ import annotations

import pytest

from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.http.event_stream import KEEP_ALIVE, EventStreamReader, ServerEvent, encode_event


def _read(data: bytes, *, max_event: int = 1 << 16, piece: int | None = None) -> list[ServerEvent]:
    reader = EventStreamReader(max_event=max_event)
    step = piece or len(data) or 1
    return [event for start in range(0, len(data), step) for event in reader.feed(data[start : start + step])]


def test_an_event_read_back_whatever_the_pieces() -> None:
    stream = encode_event("state", "b2sK") + KEEP_ALIVE + encode_event("state", "AAEC")
    expected = [ServerEvent(name="state", data="b2sK"), ServerEvent(name="state", data="AAEC")]
    for piece in (1, 2, 3, 7, len(stream)):
        assert _read(stream, piece=piece) == expected, piece


def test_crlf_line_ends_comments_and_unknown_fields() -> None:
    stream = b": hello\r\nid: 7\r\nretry: 10\r\nevent: state\r\nfoo: bar\r\ndata: a\r\ndata:b\r\n\r\n"
    assert _read(stream) == [ServerEvent(name="state", data="a\nb")]


def test_keep_alives_and_events_without_data_dispatch_nothing() -> None:
    assert _read(KEEP_ALIVE * 3 + b"event: state\n\n") == []


def test_an_unnamed_event_is_a_message() -> None:
    assert _read(b"data: x\n\n") == [ServerEvent(name="message", data="x")]


def test_an_event_is_dispatched_only_at_its_blank_line() -> None:
    reader = EventStreamReader(max_event=100)
    assert reader.feed(b"event: state\ndata: x\n") == []
    assert reader.feed(b"\n") == [ServerEvent(name="state", data="x")]


@pytest.mark.parametrize(
    "stream",
    [b"data: " + b"x" * 200, b"data: x\n" * 40, b"data: " + b"x" * 90 + b"\ndata: " + b"x" * 20],
    ids=["one long line, unfinished", "many lines of one event", "two lines over the cap"],
)
def test_an_event_over_the_cap_is_refused(stream: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        _read(stream, max_event=100, piece=16)
    assert refused.value.code is Code.TOO_LARGE


def test_events_under_the_cap_one_after_another_are_read() -> None:
    """The cap is per event, not per stream."""
    stream = encode_event("state", "x" * 70) * 50  # 91 bytes each
    assert len(_read(stream, max_event=100, piece=13)) == 50


def test_a_line_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        _read(b"data: \xff\n\n")
    assert refused.value.code is Code.INVALID_UTF8


@pytest.mark.parametrize(("name", "data"), [("state", "a\nb"), ("st\rate", "a"), ("", "a")])
def test_an_event_that_would_break_its_framing_is_not_written(name: str, data: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode_event(name, data)
