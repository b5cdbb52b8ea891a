"""The one Range form a fetch takes and the Content-Range of its answer (spec [API-40], [API-41], [API-42])."""

from __future__ import annotations

import pytest

from fedrecord.core import Code, RemoteProtocolError
from fedrecord.node.ranges import ContentRange, content_range, parse_content_range, parse_range, range_header


@pytest.mark.parametrize(
    ("values", "start"), [([], None), (["bytes=0-"], 0), (["bytes=42-"], 42), (["BYTES=7-"], 7)]
)
def test_one_open_ended_range_is_read(values: list[str], start: int | None) -> None:
    assert parse_range(values) == start


@pytest.mark.parametrize(
    "values",
    [
        ["bytes=0-10"],
        ["bytes=-10"],
        ["bytes=0-,10-"],
        ["bytes=0-", "bytes=10-"],
        ["bytes=1-, 5-"],
        ["items=0-"],
        ["bytes= 1-"],
        ["bytes=1- "],
        ["bytes=-"],
        ["bytes=+1-"],
        ["bytes=1e3-"],
        ["bytes=" + "9" * 20 + "-"],
        [""],
    ],
)
def test_every_other_range_is_bad_range(values: list[str]) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        parse_range(values)
    assert refused.value.code is Code.BAD_RANGE and refused.value.status == 416


def test_content_range_round_trip() -> None:
    assert range_header(100) == {"Range": "bytes=100-"}
    assert content_range(100, 1000) == "bytes 100-999/1000"
    assert parse_content_range("bytes 100-999/1000") == ContentRange(start=100, size=1000)


@pytest.mark.parametrize(
    "value",
    [None, "", "bytes 100-998/1000", "bytes 100-999/*", "bytes */1000", "bytes 5-3/4", "items 0-9/10"],
)
def test_a_partial_answer_runs_to_the_end_of_the_stream(value: str | None) -> None:
    with pytest.raises(RemoteProtocolError) as refused:
        parse_content_range(value)
    assert refused.value.code is Code.MALFORMED
