"""Strict deterministic CBOR (spec section 3): each rule with its own code, and properties."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import cbor
from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError


@pytest.mark.parametrize(
    ("hex_input", "code"),
    [
        ("18", Code.MALFORMED),
        ("1c", Code.MALFORMED),
        ("0000", Code.TRAILING_BYTES),
        ("5f4101ff", Code.INDEFINITE_LENGTH),
        ("a2616101616102", Code.DUPLICATE_KEY),
        ("1817", Code.NON_CANONICAL),
        ("a2616201616102", Code.NON_CANONICAL),
        ("c11a514b67b0", Code.FORBIDDEN_TAG),
        ("81" * 16 + "80", Code.TOO_DEEP),
        ("fb3ff0000000000000", Code.UNSUPPORTED_TYPE),
        ("a10100", Code.INVALID_MAP_KEY),
        ("62c328", Code.INVALID_UTF8),
    ],
)
def test_each_rule_has_its_code(hex_input, code):
    with pytest.raises(RemoteProtocolError) as caught:
        cbor.decode(bytes.fromhex(hex_input))
    assert caught.value.code is code


def test_size_cap_is_checked_first():
    with pytest.raises(RemoteProtocolError) as caught:
        cbor.decode(b"\xff" * 17, max_size=16)
    assert caught.value.code is Code.TOO_LARGE


def test_header_maps_take_small_integer_keys_only():
    assert cbor.decode(bytes.fromhex("a201270440"), int_keys=True) == {1: -8, 4: b""}
    for hex_input in ("a1181800", "a1616100", "a12000"):
        with pytest.raises(RemoteProtocolError) as caught:
            cbor.decode(bytes.fromhex(hex_input), int_keys=True)
        assert caught.value.code is Code.INVALID_MAP_KEY


def test_encoding_refuses_what_decoding_refuses():
    for value in (1.5, cbor2.undefined, 2**64, {1: 2}, cbor2.CBORTag(1, 0)):
        with pytest.raises(LocalProtocolError):
            cbor.encode(value)


values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_encode_decode_round_trip(value):
    encoded = cbor.encode(value)
    assert cbor.decode(encoded) == value
    assert cbor.encode(cbor.decode(encoded)) == encoded


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=24))
def test_fast_path_and_reference_decoder_agree(data):
    """Differential: the C fast path never accepts what the reference decoder refuses, and vice versa."""
    try:
        fast = ("ok", cbor.decode(data))
    except RemoteProtocolError as exc:
        fast = ("error", exc.code)
    try:
        reference = ("ok", cbor._Reader(data, False, False).read_all())
    except RemoteProtocolError as exc:
        reference = ("error", exc.code)
    assert fast == reference


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_any_single_bit_flip_is_refused_or_decodes_to_other_canonical_bytes(value, data):
    encoded = bytearray(cbor.encode(value))
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    encoded[bit // 8] ^= 1 << (bit % 8)
    try:
        decoded = cbor.decode(bytes(encoded))
    except RemoteProtocolError:
        return
    # Whatever decodes is canonical: re-encoding gives back exactly the flipped bytes.
    assert cbor.encode(decoded) == bytes(encoded)


def test_encoder_and_decoder_share_the_depth_rule():
    sixteen: list = []
    for _ in range(15):
        sixteen = [sixteen]
    assert cbor.decode(cbor.encode(sixteen)) == sixteen
    with pytest.raises(LocalProtocolError) as caught:
        cbor.encode([sixteen])
    assert caught.value.code is Code.TOO_DEEP
