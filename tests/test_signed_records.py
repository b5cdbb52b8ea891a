"""Signed records (spec sections 5-6): bad input gets its code, and nothing half-checked escapes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import (
    Code,
    FedrecordError,
    Grant,
    KeyWrap,
    Revocation,
    Scope,
    open_any_record,
    open_record,
    sign_record,
)
from fedrecord.core.key_wraps import unwrap_key, wrap_key
from fedrecord.vectors.record_cases import forge
from fedrecord.vectors.samples import sample_records

from .conftest import NOW, encryption_keys, identity, seed

PATIENT = identity("patient")
GP = identity("gp")
MALLORY = identity("mallory")


def a_grant():
    return sign_record(
        Grant(
            audience=GP.did,
            scope=Scope(categories=("lab",), past=True),
            actions=("read",),
            purpose="treatment",
            iat=NOW,
            nbf=NOW,
            exp=NOW + 100,
            nonce=seed("n")[:16],
        ),
        PATIENT,
    )


@pytest.mark.parametrize(("comment", "record", "signer"), sample_records(), ids=lambda x: str(x)[:30])
def test_every_record_type_round_trips(comment, record, signer):
    signed = sign_record(record, signer)
    opened = open_record(signed.encoded, type(record))
    assert opened.record == record and opened.signer == signer.did and opened.id == signed.id
    assert open_any_record(signed.encoded).record == record


def test_wrong_record_type_in_the_protected_header():
    with pytest.raises(FedrecordError) as caught:
        open_record(a_grant().encoded, Revocation)
    assert caught.value.code is Code.WRONG_TYPE


def test_non_empty_unprotected_header():
    grant = a_grant()
    message = forge(
        {1: -8, 4: PATIENT.did.encode(), 16: "fedrecord/grant"},
        grant.record.to_wire(),
        PATIENT,
        unprotected={4: b"x"},
    )
    with pytest.raises(FedrecordError) as caught:
        open_record(message, Grant)
    assert caught.value.code is Code.BAD_HEADER


def test_signature_by_a_key_other_than_the_claimed_signer():
    message = forge(
        {1: -8, 4: PATIENT.did.encode(), 16: "fedrecord/grant"}, a_grant().record.to_wire(), MALLORY
    )
    with pytest.raises(FedrecordError) as caught:
        open_record(message, Grant)
    assert caught.value.code is Code.BAD_SIGNATURE


def test_small_order_signer_key():
    from fedrecord.vectors.record_cases import _small_order_did

    message = forge(
        {1: -8, 4: _small_order_did().encode(), 16: "fedrecord/grant"}, a_grant().record.to_wire(), PATIENT
    )
    with pytest.raises(FedrecordError) as caught:
        open_record(message, Grant)
    assert caught.value.code is Code.BAD_KEY


def test_key_wrap_moved_to_another_document():
    keys = encryption_keys("gp")
    wrap = wrap_key(
        wrapper=PATIENT,
        recipient=GP.did,
        recipient_key=keys.public_key,
        doc=seed("doc-1"),
        key=seed("k"),
        purpose="treatment",
        grant=None,
        iat=NOW,
        ephemeral_seed=seed("e"),
    )
    fields = {
        name: getattr(wrap.record, name)
        for name in ("recipient", "purpose", "grant", "recipient_key", "sealed", "iat")
    }
    moved = sign_record(KeyWrap(doc=seed("doc-2"), **fields), PATIENT)
    with pytest.raises(FedrecordError) as caught:
        unwrap_key(open_record(moved.encoded, KeyWrap), recipient=GP.did, keys=keys, doc=seed("doc-2"))
    assert caught.value.code is Code.WRAP_MISMATCH
    assert unwrap_key(wrap, recipient=GP.did, keys=keys, doc=seed("doc-1")).key == seed("k")


_SAMPLES = [sign_record(record, signer).encoded for _comment, record, signer in sample_records()]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(_SAMPLES), st.data())
def test_any_single_bit_change_to_a_signed_record_is_rejected(encoded, data):
    bit = data.draw(st.integers(0, len(encoded) * 8 - 1))
    changed = bytearray(encoded)
    changed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FedrecordError):
        open_any_record(bytes(changed))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_bit_change_to_a_key_wrap_is_rejected(data):
    keys = encryption_keys("gp")
    wrap = wrap_key(
        wrapper=PATIENT,
        recipient=GP.did,
        recipient_key=keys.public_key,
        doc=seed("doc"),
        key=seed("k"),
        purpose="treatment",
        grant=seed("g"),
        iat=NOW,
        ephemeral_seed=seed("e"),
    )
    bit = data.draw(st.integers(0, len(wrap.encoded) * 8 - 1))
    changed = bytearray(wrap.encoded)
    changed[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(FedrecordError):
        unwrap_key(open_record(bytes(changed), KeyWrap), recipient=GP.did, keys=keys, doc=seed("doc"))


def test_a_sealed_binding_of_another_version_is_refused():
    from fedrecord.core import cbor
    from fedrecord.core.sealed_box import seal

    keys = encryption_keys("gp")
    binding = {
        "v": 7,
        "key": seed("k"),
        "doc": seed("doc"),
        "recipient": GP.did,
        "wrapper": PATIENT.did,
        "purpose": "treatment",
    }
    wrap = sign_record(
        KeyWrap(
            recipient=GP.did,
            doc=seed("doc"),
            purpose="treatment",
            recipient_key=keys.public_key,
            sealed=seal(cbor.encode(binding), keys.public_key, seed("e")),
            iat=NOW,
        ),
        PATIENT,
    )
    with pytest.raises(FedrecordError) as caught:
        unwrap_key(wrap, recipient=GP.did, keys=keys, doc=seed("doc"))
    assert caught.value.code is Code.WRAP_MISMATCH
