"""Every wire object in spec/vectors against spec/fedrecord.cddl (spec sections 5, 6, 9, 10).

The CDDL is validated with pycddl, which checks a value against the first rule of a schema:
one schema per rule is built by putting ``root = <rule>`` in front of the file.  The file's
own first rule, ``fedrecord-object``, is checked too.  Positive cases come from every vector
file that holds records; negative cases are payloads the code refuses, which the CDDL must
refuse as well wherever CDDL can state the rule.
"""

from __future__ import annotations

import json
import re
from typing import Any

import cbor2
import pycddl
import pytest

from fedrecord.core import Code, EncryptionKeyPair, FedrecordError, RecordType, cbor
from fedrecord.core.documents import DocumentReader
from fedrecord.core.records import WrapSecret
from fedrecord.core.sealed_box import open_sealed
from fedrecord.core.signed import open_any_record

from .cddl_schema import CDDL, SPEC, schema, valid

VECTORS = SPEC / "vectors"


def _vector_tests(name: str) -> list[dict[str, Any]]:
    document = json.loads((VECTORS / name).read_text())
    return [test for group in document["testGroups"] for test in group["tests"]]


def _assert_valid(rule: str | None, data: bytes, what: str) -> None:
    try:
        schema(rule).validate_cbor(data)
    except pycddl.ValidationError as exc:
        pytest.fail(f"{what}: not a {rule or 'fedrecord-object'}: {exc}")


def _payload_rule(typ: str) -> str:
    """typ "fedrecord/X" carries the payload rule "X-payload"."""
    return RecordType(typ).value.removeprefix("fedrecord/") + "-payload"


def _check_signed_record(encoded: bytes, what: str) -> None:
    """The envelope, its protected header and its payload, each against its rule."""
    _assert_valid("signed-record", encoded, what)
    _assert_valid(None, encoded, what)
    protected, _unprotected, payload, _signature = cbor2.loads(encoded).value
    _assert_valid("protected-header-bytes", cbor2.dumps(protected), what)
    _assert_valid("record-payload-bytes", cbor2.dumps(payload), what)
    _assert_valid(_payload_rule(cbor2.loads(protected)[16]), payload, what)
    _assert_valid("record-payload", payload, what)
    _assert_valid(None, payload, what)


def test_first_rule_is_fedrecord_object() -> None:
    first = re.search(r"^([a-z][a-z0-9-]*)\s*=", CDDL, re.MULTILINE)
    assert first is not None and first.group(1) == "fedrecord-object"
    for typ in RecordType:
        assert re.search(rf"^{_payload_rule(typ.value)} = \{{", CDDL, re.MULTILINE), typ


SIGNED = [t for t in _vector_tests("signed_records.json") if t["result"] == "valid"]


@pytest.mark.parametrize("test", SIGNED, ids=[f"{t['tcId']}-{t['comment'][:40]}" for t in SIGNED])
def test_signed_record_vectors(test: dict[str, Any]) -> None:
    _check_signed_record(bytes.fromhex(test["record"]), test["comment"])


def test_every_record_type_has_a_valid_vector() -> None:
    assert {t["expectedType"] for t in SIGNED} == {typ.value for typ in RecordType}


def _opening_records(hex_records: list[str]) -> list[bytes]:
    """The records that open (signature and payload verified); forged links are skipped."""
    opened = []
    for hex_record in hex_records:
        try:
            opened.append(open_any_record(bytes.fromhex(hex_record)).encoded)
        except FedrecordError:
            continue
    return opened


def test_capability_vector_records() -> None:
    count = 0
    for test in _vector_tests("capabilities.json"):
        records = test["chain"] + test["revocations"] + test["restrictions"]
        records += [test["head"]] if test["head"] else []
        for encoded in _opening_records(records):
            _check_signed_record(encoded, f"capabilities {test['tcId']}")
            count += 1
    assert count >= 100


def test_key_wrap_vector_records_and_sealed_secrets() -> None:
    secrets = 0
    for test in _vector_tests("key_wraps.json"):
        what = f"key_wraps {test['tcId']}"
        encoded = bytes.fromhex(test["record"])
        _check_signed_record(encoded, what)
        # The vectors give the reader's key, so the sealed wrap-secret can be checked too.
        keys = EncryptionKeyPair.from_seed(bytes.fromhex(test["recipientSeed"]))
        try:
            plaintext = open_sealed(open_any_record(encoded).record.sealed, keys)  # type: ignore[attr-defined]
        except FedrecordError:
            continue
        try:
            WrapSecret.from_wire(cbor.decode(plaintext))
            accepted = True
        except FedrecordError:
            accepted = False
        assert valid("wrap-secret", plaintext) == accepted, what
        if accepted:
            _assert_valid(None, plaintext, what)
        secrets += accepted
    assert secrets >= 2


def test_document_vector_headers() -> None:
    headers = 0
    for test in _vector_tests("documents.json"):
        reader = DocumentReader(
            bytes.fromhex(test["key"]), expected_author=test["author"], expected_patient=test["patient"]
        )
        try:
            b"".join(reader.decrypt([bytes.fromhex(test["ciphertext"])]))
        except FedrecordError:
            assert test["result"] == "invalid"
        if reader.header is None:
            continue
        _check_signed_record(reader.header.encoded, f"documents {test['tcId']}")
        headers += 1
    assert headers >= 2


# Refused by the code at the payload level.  The CDDL must refuse each one too, except those
# below whose rule CDDL cannot state: a comparison of two fields, or the order of a set.
CDDL_CANNOT_SAY = {
    "grant expiring before it starts, signed": "exp > nbf compares two fields",
    "grant with actions out of order, signed": "a set's ascending order ([REC-5])",
    "read grant covering no document, signed": "a read grant needs ids, past or future",
}
PAYLOAD_ERRORS = {Code.INVALID_RECORD.value, Code.UNSUPPORTED_VERSION.value, Code.UNSUPPORTED_TYPE.value}
REFUSED = [
    t
    for t in _vector_tests("signed_records.json")
    if t.get("error") in PAYLOAD_ERRORS and t["comment"] not in CDDL_CANNOT_SAY
]


@pytest.mark.parametrize("test", REFUSED, ids=[f"{t['tcId']}-{t['comment'][:40]}" for t in REFUSED])
def test_invalid_payloads_are_refused(test: dict[str, Any]) -> None:
    # Checked against the payload rule its typ names, as a receiver does.  Not against the
    # choice of all payloads: pycddl 0.6 keeps the keys one alternative of a type choice has
    # matched when it tries the next, so a broken grant passes as a private-restriction.
    payload = cbor2.loads(bytes.fromhex(test["record"])).value[2]
    assert not valid(_payload_rule(test["expectedType"]), payload), test["comment"]


def test_negative_cases_are_present() -> None:
    comments = {t["comment"] for t in REFUSED}
    for expected in (
        "payload with an unknown field, signed",
        "grant without expiry, signed",
        "grant with a 15-byte nonce, signed",
        "payload version 1, signed",
    ):
        assert expected in comments
    present = {t["comment"] for t in _vector_tests("signed_records.json")}
    assert set(CDDL_CANNOT_SAY) <= present


def test_error_bodies() -> None:
    for code in Code:
        body = cbor.encode({"code": code.value, "message": "a human explanation"})
        _assert_valid("error-body", body, code.value)
        _assert_valid(None, body, code.value)
    assert not valid("error-body", cbor.encode({"code": "teapot", "message": ""}))
    assert not valid("error-body", cbor.encode({"code": "not-found"}))


def test_protected_header_names_every_record_type_and_nothing_else() -> None:
    kid = b"did:key:z" + b"6" * 47
    for typ in RecordType:
        header = cbor.encode({1: -8, 4: kid, 16: typ.value}, int_keys=True)
        assert valid("protected-header", header), typ
    assert not valid("protected-header", cbor.encode({1: -8, 4: kid, 16: "fedrecord/other"}, int_keys=True))
    assert not valid("protected-header", cbor.encode({1: -7, 4: kid, 16: "fedrecord/grant"}, int_keys=True))
    assert not valid(
        "protected-header", cbor.encode({1: -8, 3: 0, 4: kid, 16: "fedrecord/grant"}, int_keys=True)
    )


def test_sync_vector_messages() -> None:
    """Every reconciliation message of the vectors is a sync-message (spec section 16.2).

    The envelope is checked against ``sync-message`` with one range, and each range against
    ``sync-range`` on its own: pycddl checks the elements of ``[+ sync-range]`` against the
    first alternative of the choice only, which refuses valid messages.
    """
    checked = 0
    for test in _vector_tests("sync.json"):
        if test["result"] != "valid":
            continue
        for message in test.get("messages", []) + [test[k] for k in ("message", "reply") if k in test]:
            version, fp_len, prefix_len, ranges = cbor2.loads(bytes.fromhex(message))
            what = f"sync case {test['tcId']}"
            _assert_valid("sync-message", cbor2.dumps([version, fp_len, prefix_len, [[None, b"", 0]]]), what)
            for sync_range in ranges:
                _assert_valid("sync-range", cbor2.dumps(sync_range), what)
            checked += 1
    assert checked > 30
    for bad in ([None, b"", 9], [None, bytes(33), 0], [-1, b"", 0], [None, b"", 1, b"short"]):
        with pytest.raises(pycddl.ValidationError):
            schema("sync-range").validate_cbor(cbor2.dumps(bad))
    with pytest.raises(pycddl.ValidationError):
        schema("sync-message").validate_cbor(cbor2.dumps([0, 4, 8, [[None, b"", 0]]]))
