"""The fast reading of a signed record's COSE_Sign1 agrees with the strict decoder (spec [SIG-8], [CBOR-13]).

:func:`record_shaped` takes only the one shape every record has and cuts the
Sig_structure out of the received bytes; whatever it accepts, the general
path must accept with the same parts, and whatever it declines still gets
the general path's code.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import FedrecordError, open_any_record, sign_record, signed
from fedrecord.core.cose import (
    ALG_EDDSA,
    HEADER_ALG,
    HEADER_KID,
    HEADER_TYP,
    parse_general_sign1,
    record_shaped,
    sign1,
)
from fedrecord.core.cose import sig_structure as encoded_sig_structure
from fedrecord.core.signed import _parts
from fedrecord.vectors.samples import sample_records

from .conftest import identity

SIGNER = identity("patient")
SAMPLES = [record for _comment, record, _signer in sample_records()]


def general_parts(data: bytes) -> tuple[bytes, bytes, str, bytes, bytes, bytes]:
    message = parse_general_sign1(data, max_size=1 << 20)
    assert message.unprotected == {}
    assert message.protected.keys() == {HEADER_ALG, HEADER_KID, HEADER_TYP}
    return (
        message.protected_bytes,
        message.protected[HEADER_KID],
        message.protected[HEADER_TYP],
        message.payload,
        message.signature,
        message.to_be_signed,
    )


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_every_sample_record_takes_the_fast_path_with_the_general_result(record: object) -> None:
    data = sign_record(record, SIGNER).encoded  # type: ignore[type-var]
    fast = record_shaped(data)
    assert fast is not None
    assert fast == general_parts(data)
    assert fast[5] == encoded_sig_structure(fast[0], fast[3])


@pytest.mark.parametrize("size", [0, 1, 23, 24, 25, 255, 256, 257, 1000, 65_535, 65_536])
@pytest.mark.parametrize("kid_size", [0, 23, 24, 255, 256])
def test_string_heads_at_every_boundary(size: int, kid_size: int) -> None:
    """Payloads and kids whose lengths need 0, 1, 2 or 4 length bytes."""
    protected = {HEADER_ALG: ALG_EDDSA, HEADER_KID: b"k" * kid_size, HEADER_TYP: "fedrecord/grant"}
    data = sign1(SIGNER, protected, bytes(size))
    fast = record_shaped(data)
    if fast is None:
        assert size >= 65_536  # a four-byte length is left to the general path
    else:
        assert fast == general_parts(data)


def test_a_non_shortest_head_is_left_to_the_general_path() -> None:
    data = sign_record(SAMPLES[0], SIGNER).encoded
    fast = record_shaped(data)
    assert fast is not None
    payload = fast[3]
    assert 24 <= len(payload) < 256
    start = data.index(payload) - 2
    longer = data[:start] + b"\x59\x00" + data[start + 1 :]  # the same length on two bytes
    assert record_shaped(longer) is None
    with pytest.raises(FedrecordError, match=r"^non-canonical:"):
        open_any_record(longer)


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    position = st.integers(0, len(data) - 1)
    flip = st.tuples(position, st.integers(0, 7)).map(
        lambda pb: data[: pb[0]] + bytes([data[pb[0]] ^ (1 << pb[1])]) + data[pb[0] + 1 :]
    )
    replace = st.tuples(position, st.integers(0, 255)).map(
        lambda pv: data[: pv[0]] + bytes([pv[1]]) + data[pv[0] + 1 :]
    )
    cut = position.map(lambda p: data[:p])
    insert = st.tuples(position, st.binary(min_size=1, max_size=3)).map(
        lambda pi: data[: pi[0]] + pi[1] + data[pi[0] :]
    )
    delete = position.map(lambda p: data[:p] + data[p + 1 :])
    return st.one_of(flip, replace, cut, insert, delete)


def outcome(run: object) -> object:
    try:
        return run()  # type: ignore[operator]
    except FedrecordError as exc:
        return exc.code


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_records_give_the_general_result(data: st.DataObject) -> None:
    record = data.draw(st.sampled_from(SAMPLES))
    mutated = data.draw(mutations(sign_record(record, SIGNER).encoded))  # type: ignore[type-var]
    fast = record_shaped(mutated)
    if fast is not None:
        assert fast == general_parts(mutated)
    # Whatever the fast path does, the signed-record layer answers as the general path would.
    assert outcome(lambda: _parts(mutated, 65_536)) == outcome(lambda: _general_record_parts(mutated))


def _general_record_parts(data: bytes) -> object:
    """What signed._parts answered before it had a fast path: parse_general_sign1, then the header rules."""
    original = signed.record_shaped
    signed.record_shaped = lambda _data: None  # type: ignore[assignment]
    try:
        return _parts(data, 65_536)
    finally:
        signed.record_shaped = original


def test_a_tagged_array_that_is_not_a_record() -> None:
    data = cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""]))
    assert record_shaped(data) is None
