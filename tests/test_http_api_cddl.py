"""The bodies of the node HTTP API against spec/fedrecord.cddl (spec section 15, [API-2]).

Three sources of bodies, each checked against the CDDL rule the spec names for it:

* bodies built with :func:`fedrecord.node.wire.encode_body` from the vector samples
  (:mod:`fedrecord.vectors.samples`), one per rule, and the invitation payload of
  :class:`fedrecord.node.wire.Invitation`;
* the bodies a real :class:`PatientNode` produces (``state_for``, ``documents_for``, the grant
  of ``connect``), over a node home in ``tmp_path``;
* the bytes a served patient node answers over HTTP to signed requests (connect, deposit,
  state, list, health, profile, every op of manage, and refusals as error bodies), and the data of
  the events of its event stream (state answers, spec section 15.14);
* the bytes a served clinic node answers to every op of its own manage endpoint (spec section
  15.20), driven against a served patient node, and its refusals (``wrong-audience``,
  ``unreachable``) as error bodies.

Negative cases: bodies the nodes refuse are refused by the CDDL too.  CDDL maps are closed, so
a body with a field the spec does not define is refused by the CDDL, while receivers ignore such
a field ([API-2]): senders send none.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pycddl
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from nacl.pwhash import argon2id

from fedrecord.core import (
    AccessReceipt,
    Deposit,
    DocumentHeader,
    Grant,
    PrivateRestriction,
    Record,
    Scope,
    Signed,
    SigningIdentity,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentWriter
from fedrecord.core.errors import FedrecordError
from fedrecord.core.key_wraps import make_deposit
from fedrecord.core.stream import key_commitment
from fedrecord.http.aiohttp_signing import client_signing_headers
from fedrecord.http.event_stream import EventStreamReader, ServerEvent
from fedrecord.node.home import NodeHome, init_home
from fedrecord.node.patient import PatientNode
from fedrecord.node.server import CLINIC, PATIENT, health, make_app, profile
from fedrecord.node.wire import INVITATION_PREFIX, Invitation, decode_body, encode_body
from fedrecord.vectors.samples import GP, LAB, NOW, SPECIALIST, sample_records
from fedrecord.vectors.samples import PATIENT as PATIENT_ID

from .cddl_schema import CDDL, schema, valid

PASSPHRASE = b"test passphrase, not a secret"
KDF_LIMITS = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE)
DAY = 86_400

# Every body rule of spec section 15, and the CDDL choice that gathers them.
API_RULES = (
    "connect-request",
    "connect-answer",
    "deposit-answer",
    "state-request",
    "state-answer",
    "list-request",
    "list-answer",
    "fetch-request",
    "fetch-batch-request",
    "fetch-batch-answer",
    "attestation-request",
    "decision-request",
    "stored-answer",
    "delegation-request",
    "delegation-answer",
    "health-answer",
    "sync-request",
    "sync-answer",
    "records-request",
    "records-answer",
    "push-request",
    "push-answer",
    "manage-request",
    "manage-answer",
    "clinic-manage-request",
    "clinic-manage-answer",
)


def _assert_body(rule: str, data: bytes, what: str = "") -> None:
    """``data`` is a ``rule``, an ``api-body`` and a fedrecord object, and the nodes decode it."""
    for name in (rule, "api-body", None):
        try:
            schema(name).validate_cbor(data)
        except pycddl.ValidationError as exc:
            pytest.fail(f"{what or rule}: not a {name or 'fedrecord-object'}: {exc}")
    decode_body(data)  # what every receiver does first ([API-2])
    assert cbor.encode(cbor.decode(data)) == data, "not the deterministic encoding"
    _assert_record_arrays(data, what or rule)


# Arrays of records are ``[n*m bstr]`` in the CDDL (pycddl 0.6 does not count the elements of an
# array under .cbor): each element is checked against signed-record-bytes here.
RECORD_ARRAYS = ("chain", "revocations", "tombstones", "grants", "records")


def _assert_record_arrays(data: bytes, what: str) -> None:
    body = cbor.decode(data)
    for key in RECORD_ARRAYS:
        # A clinic's poll answer counts its "grants" (uint): only arrays hold records.
        array = body.get(key)
        for element in array if type(array) is list else []:
            assert valid("signed-record-bytes", cbor.encode(element)), f"{what}: {key} holds a non-record"


def _assert_manage(op: str, kind: str, data: bytes) -> None:
    """A manage body is the rule of its op ("manage-<op>-request" / "-answer"), then a manage body.

    pycddl 0.6 is lenient with a choice of maps (spec/fedrecord.cddl), so the rule of the op is the
    one that says whether the body is right.
    """
    try:
        schema(f"manage-{op}-{kind}").validate_cbor(data)
    except pycddl.ValidationError as exc:
        pytest.fail(f"{op}: not a manage-{op}-{kind}: {exc}")
    _assert_body(f"manage-{kind}", data, f"manage {op} {kind}")


MANAGE_OPS = ("invite", "accept", "reject", "label", "hide", "revoke", "delete", "keep", "inbox", "audit")
CLINIC_OPS = ("connect", "deposit", "flush", "poll", "fetch", "held", "sync", "delegate")


def _assert_clinic_manage(op: str, kind: str, data: bytes) -> None:
    """A clinic's manage body is the rule of its op ("clinic-<op>-request" / "-answer"), then a
    clinic-manage body (spec section 15.20), as :func:`_assert_manage` checks the patient's."""
    try:
        schema(f"clinic-{op}-{kind}").validate_cbor(data)
    except pycddl.ValidationError as exc:
        pytest.fail(f"{op}: not a clinic-{op}-{kind}: {exc}")
    _assert_body(f"clinic-manage-{kind}", data, f"clinic manage {op} {kind}")


# The rules that are one map each: pycddl 0.6 takes even an array for a choice of maps, so a body
# is refused by the rules of its ops rather than by manage-request or manage-answer.
CHOICE_RULES = ("manage-request", "manage-answer", "clinic-manage-request", "clinic-manage-answer")
ONE_MAP_RULES = (
    *(rule for rule in API_RULES if rule not in CHOICE_RULES),
    *(f"manage-{op}-{kind}" for op in MANAGE_OPS for kind in ("request", "answer")),
    *(f"clinic-{op}-{kind}" for op in CLINIC_OPS for kind in ("request", "answer")),
)


def test_every_manage_op_has_its_rules() -> None:
    for kind in ("request", "answer"):
        choice = CDDL.split(f"\nmanage-{kind} = ")[1].split("\n\n")[0]
        names = sorted(name.strip() for name in choice.replace("\n", " ").split("/"))
        assert names == sorted(f"manage-{op}-{kind}" for op in MANAGE_OPS)


def test_every_clinic_manage_op_has_its_rules() -> None:
    for kind in ("request", "answer"):
        choice = CDDL.split(f"\nclinic-manage-{kind} = ")[1].split("\n\n")[0]
        names = sorted(name.strip() for name in choice.replace("\n", " ").split("/"))
        assert names == sorted(f"clinic-{op}-{kind}" for op in CLINIC_OPS)


def test_every_api_rule_is_in_the_cddl_and_in_api_body() -> None:
    for rule in (*API_RULES, "document-entry", "invitation-payload", "signed-record-bytes", "chain"):
        assert f"\n{rule} = " in CDDL, rule
    choice = CDDL.split("\napi-body = ")[1].split("\n\n")[0]
    assert sorted(name.strip() for name in choice.replace("\n", " ").split("/")) == sorted(API_RULES)


# --- bodies built from the vector samples ------------------------------------------------------


def _signed_samples() -> dict[str, Signed[Record]]:
    """The first sample record of each type, signed, by type name (``grant``, ``state-head``...)."""
    found: dict[str, Signed[Record]] = {}
    for _name, record, signer in sample_records():
        found.setdefault(record.TYPE.value.removeprefix("fedrecord/"), sign_record(record, signer))
    return found


SAMPLES = _signed_samples()

# The receipt and the key wrap of a batch (spec 15.21): the samples of those types with ``docs``.
BATCH = {
    record.TYPE.value.removeprefix("fedrecord/"): sign_record(record, signer)
    for _name, record, signer in sample_records()
    if getattr(record, "docs", None)
}


def _child_grant() -> Signed[Grant]:
    """The GP delegates the sample grant to a specialist, read only, as the reference clinic does."""
    parent = SAMPLES["grant"]
    assert isinstance(parent.record, Grant)
    return sign_record(
        Grant(
            audience=SPECIALIST.did,
            scope=parent.record.scope,
            actions=("read",),
            purpose=parent.record.purpose,
            iat=NOW,
            nbf=NOW,
            exp=parent.record.exp,
            parent=parent.id,
            nonce=bytes(range(16)),
        ),
        GP,
    )


# A reconciliation message: one skip over the whole space (spec section 16.2).  The ranges of other
# modes are checked in tests/test_cddl.py: pycddl checks the elements of [+ sync-range] against the
# first alternative of the choice only.
_FIRST_SYNC_MESSAGE = cbor.encode([0, 12, 8, [[None, b"", 0]]])


def _sample_bodies() -> dict[str, list[bytes]]:
    s = SAMPLES
    chain = [s["grant"].encoded]
    return {
        "connect-request": [encode_body(token=bytes(32), profile=s["node-profile"].encoded)],
        "connect-answer": [encode_body(grant=s["grant"].encoded, profile=s["node-profile"].encoded)],
        "deposit-answer": [encode_body(status="inbox"), encode_body(status="known")],
        "state-request": [encode_body(), encode_body(head=s["state-head"].encoded)],
        "state-answer": [
            encode_body(head=s["state-head"].encoded, revocations=[], tombstones=[], grants=[]),
            encode_body(
                head=s["state-head"].encoded,
                revocations=[s["revocation"].encoded],
                tombstones=[s["tombstone"].encoded],
                grants=chain,
            ),
        ],
        "list-request": [
            encode_body(chain=chain),
            encode_body(chain=chain, profile=s["node-profile"].encoded),
        ],
        "list-answer": [
            encode_body(documents=[]),
            encode_body(documents=[{"doc": bytes(32), "size": 4148, "category": "lab", "date": NOW}]),
        ],
        "fetch-request": [
            encode_body(chain=chain, receipt=s["access-receipt"].encoded),
            encode_body(chain=chain, receipt=s["access-receipt"].encoded, profile=s["node-profile"].encoded),
        ],
        "fetch-batch-request": [
            encode_body(chain=chain, receipt=BATCH["access-receipt"].encoded),
            encode_body(chain=chain, receipt=s["access-receipt"].encoded, profile=s["node-profile"].encoded),
        ],
        "fetch-batch-answer": [
            encode_body(wrap=BATCH["key-wrap"].encoded, streams=[b"\x00" * 52, b"\x01" * 60, b"\x02" * 70])
        ],
        "attestation-request": [encode_body(attestation=s["deletion-attestation"].encoded)],
        "decision-request": [encode_body(decision=s["deposit-decision"].encoded)],
        "stored-answer": [encode_body(status="stored")],
        "delegation-request": [
            encode_body(
                patient=PATIENT_ID.did,
                endpoint="https://patient.example/fedrecord",
                profile=s["node-profile"].encoded,
                chain=[*chain, _child_grant().encoded],
            )
        ],
        "delegation-answer": [encode_body(grant=_child_grant().id)],
        "health-answer": [
            encode_body(node=LAB.did, role="clinic", versions=[0]),
            encode_body(node=PATIENT_ID.did, role="patient", versions=[0]),
        ],
        "sync-request": [
            encode_body(message=_FIRST_SYNC_MESSAGE),
            encode_body(message=_FIRST_SYNC_MESSAGE, chain=chain),
            encode_body(message=_FIRST_SYNC_MESSAGE, chain=[]),
        ],
        "sync-answer": [encode_body(message=_FIRST_SYNC_MESSAGE)],
        "records-request": [encode_body(ids=[]), encode_body(ids=[bytes(32)] * 3, chain=chain)],
        "records-answer": [
            encode_body(records=[]),
            encode_body(records=[s["grant"].encoded, s["tombstone"].encoded]),
        ],
        "push-request": [encode_body(chain=chain, records=[_child_grant().encoded])],
        "push-answer": [encode_body(stored=0), encode_body(stored=1)],
        "manage-request": [request for request, _answer in _manage_samples().values()],
        "manage-answer": [answer for _request, answer in _manage_samples().values()],
        "clinic-manage-request": [request for request, _answer in _clinic_manage_samples().values()],
        "clinic-manage-answer": [answer for _request, answer in _clinic_manage_samples().values()],
    }


def _manage_samples() -> dict[str, tuple[bytes, bytes]]:
    """One (request, answer) of each manage op, by op."""
    s = SAMPLES
    invitation = Invitation(
        node=PATIENT_ID.did, endpoint="https://patient.example", token=bytes(32), expires=NOW
    )
    item = {
        "doc": bytes(32),
        "author": LAB.did,
        "title": "Ferritin",
        "category": "lab",
        "labels": ["PSY"],
        "date": NOW,
        "size": 4148,
    }
    doc = bytes(range(32))
    return {
        "invite": (
            encode_body(op="invite", label="Laboratoire", ttl=7 * DAY),
            encode_body(code=invitation.code(), exp=NOW),
        ),
        "accept": (
            encode_body(op="accept", doc=doc, labels=["PSY"]),
            encode_body(entry=s["accepted-entry"].encoded),
        ),
        "reject": (encode_body(op="reject", doc=doc), encode_body(decision=s["deposit-decision"].encoded)),
        "label": (
            encode_body(op="label", doc=doc, labels=["HIV", "SEX"], remove=False),
            encode_body(labels=["HIV", "SEX"]),
        ),
        "hide": (encode_body(op="hide", doc=doc, hidden=True), encode_body()),
        "revoke": (
            encode_body(op="revoke", grant=s["grant"].id, reason="lost device"),
            encode_body(revocation=s["revocation"].encoded),
        ),
        "delete": (encode_body(op="delete", doc=doc), encode_body(tombstone=s["tombstone"].encoded)),
        "keep": (
            encode_body(op="keep", records=[s["grant"].encoded, s["private-restriction"].encoded]),
            encode_body(stored=2),
        ),
        "inbox": (encode_body(op="inbox"), encode_body(items=[item])),
        "audit": (
            encode_body(op="audit"),
            encode_body(
                entries=[
                    {
                        "seq": 1,
                        "receipt": s["access-receipt"].encoded,
                        "at": NOW,
                        "prev_hash": bytes(32),
                        "entry_hash": bytes(range(32)),
                        "countersignature": bytes(64),
                    }
                ]
            ),
        ),
    }


def _clinic_manage_samples() -> dict[str, tuple[bytes, bytes]]:
    """One (request, answer) of each op of a clinic's manage endpoint, by op."""
    s = SAMPLES
    invitation = Invitation(
        node=PATIENT_ID.did, endpoint="https://patient.example", token=bytes(32), expires=NOW
    )
    doc = bytes(range(32))
    counts = {
        "rounds": 2,
        "bytes_sent": 310,
        "bytes_received": 4096,
        "records_fetched": 5,
        "records_stored": 5,
        "records_pushed": 0,
        "documents_fetched": 1,
        "documents_failed": 0,
    }
    return {
        "connect": (
            encode_body(op="connect", code=invitation.code()),
            encode_body(patient=PATIENT_ID.did, grant=s["grant"].encoded),
        ),
        "deposit": (
            encode_body(
                op="deposit",
                patient=PATIENT_ID.did,
                content=b"Ferritin 80 ng/mL\n",
                title="Ferritin",
                category="lab",
                type="lab-result",
                labels=["PSY"],
                media="text/plain",
            ),
            encode_body(doc=doc),
        ),
        "flush": (encode_body(op="flush"), encode_body(sent=1, pending=0)),
        "poll": (
            encode_body(op="poll", patient=PATIENT_ID.did),
            encode_body(seq=7, destroyed=0, attested=1, grants=2),
        ),
        "fetch": (
            encode_body(op="fetch", patient=PATIENT_ID.did, doc=doc),
            encode_body(content=b"Ferritin 80 ng/mL\n"),
        ),
        "held": (
            encode_body(op="held", patient=PATIENT_ID.did),
            encode_body(docs=[{"doc": doc, "patient": PATIENT_ID.did}]),
        ),
        "sync": (encode_body(op="sync", patient=PATIENT_ID.did, records_only=True), encode_body(**counts)),
        "delegate": (
            encode_body(
                op="delegate",
                patient=PATIENT_ID.did,
                to=SPECIALIST.did,
                endpoint="https://specialist.example/fedrecord",
                categories=["lab"],
                days=30,
            ),
            encode_body(grant=_child_grant().encoded),
        ),
    }


@pytest.mark.parametrize("op", CLINIC_OPS)
def test_clinic_manage_sample_bodies_follow_the_rules_of_their_op(op: str) -> None:
    request, answer = _clinic_manage_samples()[op]
    _assert_clinic_manage(op, "request", request)
    _assert_clinic_manage(op, "answer", answer)


def test_clinic_manage_minimal_bodies() -> None:
    """Every optional argument left out; a fetch answered with the size of a large document."""
    _assert_clinic_manage("held", "request", encode_body(op="held"))
    _assert_clinic_manage("sync", "request", encode_body(op="sync", patient=PATIENT_ID.did))
    _assert_clinic_manage(
        "deposit",
        "request",
        encode_body(op="deposit", patient=PATIENT_ID.did, content=b"", title="Note", category="note"),
    )
    _assert_clinic_manage(
        "delegate",
        "request",
        encode_body(op="delegate", patient=PATIENT_ID.did, to=SPECIALIST.did, endpoint="http://127.0.0.1:8"),
    )
    _assert_clinic_manage("fetch", "answer", encode_body(size=786_433))
    _assert_clinic_manage("held", "answer", encode_body(docs=[]))


@pytest.mark.parametrize("op", MANAGE_OPS)
def test_manage_sample_bodies_follow_the_rules_of_their_op(op: str) -> None:
    request, answer = _manage_samples()[op]
    _assert_manage(op, "request", request)
    _assert_manage(op, "answer", answer)


SAMPLE_BODIES = [(rule, body) for rule, bodies in _sample_bodies().items() for body in bodies]


@pytest.mark.parametrize(
    ("rule", "body"), SAMPLE_BODIES, ids=[f"{r}-{i}" for i, (r, _b) in enumerate(SAMPLE_BODIES)]
)
def test_sample_bodies(rule: str, body: bytes) -> None:
    _assert_body(rule, body)


def test_every_rule_has_a_sample_body() -> None:
    assert {rule for rule, _body in SAMPLE_BODIES} == set(API_RULES)


def _with(body: bytes, **changes: Any) -> bytes:
    """``body`` with fields replaced, added, or removed (a value of None)."""
    fields = cbor.decode(body)
    for key, value in changes.items():
        if value is None:
            fields.pop(key, None)
        else:
            fields[key] = value
    return cbor.encode(fields)


BROKEN = [
    # (rule, body, what is wrong with it)
    ("state-request", cbor.encode({}), "no v"),
    ("state-request", cbor.encode({"v": 1}), "another version"),
    ("state-request", cbor.encode({"v": False}), "a boolean v"),
    ("state-request", cbor.encode({"v": 0, "since": 3}), "a field the spec does not define"),
    ("state-request", cbor.encode({"v": 0, "head": "text"}), "a head that is not a byte string"),
    ("connect-request", _with(_sample_bodies()["connect-request"][0], token=bytes(31)), "31-byte token"),
    ("connect-request", _with(_sample_bodies()["connect-request"][0], token="abc"), "text token"),
    ("connect-request", _with(_sample_bodies()["connect-request"][0], profile=None), "no profile"),
    (
        "connect-request",
        _with(_sample_bodies()["connect-request"][0], profile=b"\x00"),
        "profile not a record",
    ),
    ("list-request", _with(_sample_bodies()["list-request"][0], chain=[]), "empty chain"),
    (
        "list-request",
        _with(_sample_bodies()["list-request"][0], chain=[SAMPLES["grant"].encoded] * 9),
        "9 links",
    ),
    (
        "list-request",
        _with(_sample_bodies()["list-request"][0], chain=SAMPLES["grant"].encoded),
        "chain not an array",
    ),
    ("fetch-request", _with(_sample_bodies()["fetch-request"][0], receipt=5), "receipt not bytes"),
    ("fetch-request", _with(_sample_bodies()["fetch-request"][0], receipt=None), "no receipt"),
    ("deposit-answer", encode_body(status="accepted"), "unknown status"),
    ("stored-answer", encode_body(status="inbox"), "another status"),
    (
        "list-answer",
        encode_body(documents=[{"doc": bytes(31), "size": 1, "category": "lab", "date": 0}]),
        "short id",
    ),
    (
        "list-answer",
        encode_body(documents=[{"doc": bytes(32), "size": 1, "category": "lab"}]),
        "entry without date",
    ),
    ("state-answer", _with(_sample_bodies()["state-answer"][0], tombstones=None), "no tombstones"),
    (
        "delegation-request",
        _with(_sample_bodies()["delegation-request"][0], chain=[SAMPLES["grant"].encoded]),
        "one link",
    ),
    ("delegation-request", _with(_sample_bodies()["delegation-request"][0], patient="patient"), "not a did"),
    ("health-answer", encode_body(node=LAB.did, role="device", versions=[0]), "device role"),
    ("health-answer", encode_body(node=LAB.did, role="clinic", versions=[]), "no version"),
    ("manage-request", encode_body(op="frobnicate"), "unknown op"),
    ("manage-request", encode_body(), "no op"),
    ("manage-invite-request", encode_body(op="invite", ttl=0), "ttl 0"),
    ("manage-invite-request", encode_body(op="invite", ttl=30 * DAY + 1), "ttl over 30 days"),
    ("manage-accept-request", encode_body(op="accept"), "accept without doc"),
    ("manage-accept-request", encode_body(op="accept", doc=bytes(31)), "31-byte doc"),
    ("manage-accept-request", encode_body(op="accept", doc=bytes(32), labels=["not a token"]), "bad label"),
    ("manage-label-request", encode_body(op="label", doc=bytes(32)), "label without labels"),
    ("manage-hide-request", encode_body(op="hide", doc=bytes(32)), "hide without hidden"),
    ("manage-hide-request", encode_body(op="hide", doc=bytes(32), hidden=1), "hidden not a boolean"),
    ("manage-revoke-request", encode_body(op="revoke", grant=bytes(32), reason=""), "empty reason"),
    ("manage-keep-request", encode_body(op="keep", records=[b""] * 513), "513 records"),
    ("manage-inbox-request", encode_body(op="inbox", doc=bytes(32)), "inbox with an argument"),
    ("manage-invite-answer", encode_body(code="nope", exp=NOW), "not an invitation code"),
    ("manage-invite-answer", encode_body(code="fr0-abc"), "code without exp"),
    ("manage-hide-answer", encode_body(stored=1), "a field hide does not answer"),
    ("clinic-manage-request", encode_body(op="frobnicate"), "unknown clinic op"),
    ("clinic-connect-request", encode_body(op="connect"), "connect without code"),
    ("clinic-connect-request", encode_body(op="connect", code=""), "empty code"),
    (
        "clinic-deposit-request",
        encode_body(op="deposit", patient=PATIENT_ID.did, content=bytes(786_433), title="t", category="c"),
        "content over the cap",
    ),
    (
        "clinic-deposit-request",
        encode_body(
            op="deposit", patient=PATIENT_ID.did, content=b"", title="t", category="c", labels=["L"] * 33
        ),
        "33 labels",
    ),
    (
        "clinic-deposit-request",
        encode_body(op="deposit", patient="patient", content=b"", title="t", category="c"),
        "patient not a did",
    ),
    ("clinic-poll-request", encode_body(op="poll"), "poll without patient"),
    ("clinic-fetch-request", encode_body(op="fetch", patient=PATIENT_ID.did, doc=bytes(31)), "31-byte doc"),
    ("clinic-sync-request", encode_body(op="sync", patient=PATIENT_ID.did, records_only=1), "records_only 1"),
    (
        "clinic-delegate-request",
        encode_body(op="delegate", patient=PATIENT_ID.did, to=LAB.did, endpoint="ftp://lab.example"),
        "ftp endpoint",
    ),
    (
        "clinic-delegate-request",
        encode_body(op="delegate", patient=PATIENT_ID.did, to=LAB.did, endpoint="http://lab", days=366),
        "366 days",
    ),
    ("clinic-fetch-answer", encode_body(content=b"x", size=1), "content and size"),
    ("clinic-fetch-answer", encode_body(size=10), "size of a document that fits"),
    ("clinic-fetch-answer", encode_body(), "neither content nor size"),
    ("clinic-flush-answer", encode_body(sent=1), "flush without pending"),
    ("clinic-poll-answer", encode_body(seq=1, destroyed=0, attested=0), "poll without grants"),
    ("clinic-held-answer", encode_body(docs=[{"doc": bytes(32)}]), "held item without patient"),
    ("clinic-sync-answer", encode_body(rounds=1), "sync without its counts"),
    ("clinic-delegate-answer", encode_body(grant=bytes(32)), "a grant id, not the record"),
]


@pytest.mark.parametrize(("rule", "body", "what"), BROKEN, ids=[b[2] for b in BROKEN])
def test_broken_bodies_are_refused(rule: str, body: bytes, what: str) -> None:
    assert not valid(rule, body), what


def test_arrays_of_records_hold_records() -> None:
    body = _with(_sample_bodies()["list-request"][0], chain=[SAMPLES["grant"].encoded, b"\x00"])
    assert valid("list-request", body)  # the shape; the elements are checked one by one:
    with pytest.raises(AssertionError):
        _assert_record_arrays(body, "chain with a non-record")


def test_broken_bodies_the_nodes_refuse_on_decoding() -> None:
    """Where the receiver's first step ([API-2]) refuses a body, so does the CDDL."""
    for data, required in (
        (cbor.encode({}), ()),
        (cbor.encode({"v": 1}), ()),
        (cbor.encode([0]), ()),
        (encode_body(profile=SAMPLES["node-profile"].encoded), ("token", "profile")),
    ):
        with pytest.raises(FedrecordError):
            decode_body(data, *required)
        assert not any(valid(rule, data) for rule in ONE_MAP_RULES), data.hex()


def test_invitation_payload() -> None:
    invitation = Invitation(
        node=PATIENT_ID.did, endpoint="https://patient.example", token=bytes(32), expires=NOW
    )
    code = invitation.code()
    assert code.startswith(INVITATION_PREFIX) and "=" not in code
    payload = base64.urlsafe_b64decode(code[len(INVITATION_PREFIX) :] + "=" * (-len(code) % 4))
    assert valid("invitation-payload", payload)
    assert valid(None, payload)
    assert Invitation.parse(invitation.url()) == invitation
    assert not valid("invitation-payload", _with(payload, token=bytes(16)))
    assert not valid("invitation-payload", _with(payload, exp=None))


# --- bodies of a real patient node -------------------------------------------------------------


@dataclass
class World:
    patient_home: NodeHome
    clinic_home: NodeHome
    patient: PatientNode
    read_grant: Signed[Grant]
    docs: list[bytes]


async def _open_home(path: Path, role: str, name: str) -> NodeHome:
    init_home(
        path,
        role=role,
        name=name,
        endpoint="http://127.0.0.1:9",
        passphrase=PASSPHRASE,
        kdf_limits=KDF_LIMITS,
    )
    return await NodeHome.open(path, PASSPHRASE)


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


def _document(
    clinic: NodeHome, patient: NodeHome, deposit_grant: bytes, *, title: str, now: int
) -> tuple[bytes, bytes]:
    """A lab result encrypted by the clinic for the patient: (deposit record, stream)."""
    key, prefix = os.urandom(32), os.urandom(16)
    content = title.encode() * 40
    header = DocumentHeader(
        patient=patient.did,
        title=title,
        doc_type="lab-result",
        category="lab",
        labels=(),
        date=now - DAY,
        media_type="text/plain",
        size=len(content),
        commitment=key_commitment(key, prefix),
    )
    writer = DocumentWriter(clinic.identity, header, key=key, prefix=prefix)
    stream = b"".join(writer.encrypt([content]))
    patient_key = patient.profile.record.encryption_key_at(now)
    assert patient_key is not None
    deposit = make_deposit(
        depositor=clinic.identity,
        patient=patient.did,
        patient_key=patient_key.key,
        doc=writer.document_id,
        size=len(stream),
        key=key,
        grant=deposit_grant,
        iat=now,
        ephemeral_seed=os.urandom(32),
    )
    return deposit.encoded, stream


async def _world(tmp_path: Path) -> World:
    """A patient node with a connected clinic: three deposits, two accepted, one deleted, grants."""
    now = int(time.time())
    patient_home = await _open_home(tmp_path / "patient", "patient", "Camille")
    clinic_home = await _open_home(tmp_path / "clinic", "clinic", "Laboratoire")
    patient = PatientNode(patient_home)
    invitation = await patient.create_invitation(label="lab", now=now)
    deposit_grant = await patient.connect(
        requester=clinic_home.did, token=invitation.token, profile=clinic_home.profile.encoded, now=now
    )
    docs = []
    for title in ("Complete blood count", "Ferritin", "Lipid panel"):
        deposit, stream = _document(clinic_home, patient_home, deposit_grant.id, title=title, now=now)
        outcome = await patient.receive_deposit(
            requester=clinic_home.did, deposit=deposit, ciphertext=_stream(stream), now=now
        )
        assert outcome == "inbox"
        docs.append(open_record(deposit, Deposit).record.doc)
    for doc in docs:
        await patient.accept(doc, now=now)
    await patient.delete(docs[2], now=now)
    read_grant = await patient.grant(
        audience=clinic_home.did,
        scope=Scope(categories=("lab",), past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=30,
        now=now,
    )
    revoked = await patient.grant(
        audience=clinic_home.did,
        scope=Scope(past=True),
        actions=("read",),
        purpose="treatment",
        days=1,
        now=now,
    )
    await patient.revoke(revoked.id, now=now)
    return World(patient_home, clinic_home, patient, read_grant, docs[:2])


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    built = await _world(tmp_path)
    try:
        yield built
    finally:
        await built.patient_home.close()
        await built.clinic_home.close()


async def test_state_for_is_a_state_answer(world: World) -> None:
    state = await world.patient.state_for(world.clinic_home.did, now=int(time.time()))
    body = encode_body(**state)
    _assert_body("state-answer", body)
    # Grants addressed to the clinic (deposit, read, revoked read), the revocation, the tombstone.
    assert len(state["grants"]) == 3 and len(state["revocations"]) == 1 and len(state["tombstones"]) == 1
    for encoded in (state["head"], *state["revocations"], *state["tombstones"], *state["grants"]):
        assert valid("signed-record", encoded)


async def test_state_for_a_stranger_is_a_state_answer(world: World) -> None:
    state = await world.patient.state_for(SPECIALIST.did, now=int(time.time()))
    _assert_body("state-answer", encode_body(**state))
    assert state["grants"] == []


async def test_documents_for_is_a_list_answer(world: World) -> None:
    documents = await world.patient.documents_for(
        world.clinic_home.did, [world.read_grant.encoded], now=int(time.time())
    )
    _assert_body("list-answer", encode_body(documents=documents))
    assert sorted(entry["doc"] for entry in documents) == sorted(world.docs)
    for entry in documents:
        assert valid("document-entry", cbor.encode(entry))


async def test_fetch_request_and_key_wrap_of_a_real_fetch(world: World) -> None:
    now = int(time.time())
    receipt = sign_record(
        AccessReceipt(
            patient=world.patient_home.did,
            doc=world.docs[0],
            grant=world.read_grant.id,
            action="read",
            purpose="treatment",
            iat=now,
            nonce=os.urandom(16),
        ),
        world.clinic_home.identity,
    )
    body = encode_body(
        chain=[world.read_grant.encoded], receipt=receipt.encoded, profile=world.clinic_home.profile.encoded
    )
    _assert_body("fetch-request", body)
    request = decode_body(body, "chain", "receipt")
    wrap, size, chunks = await world.patient.fetch(
        world.clinic_home.did,
        request["chain"],
        request["receipt"],
        now=now,
        offered_profile=request["profile"],
    )
    stream = b"".join([chunk async for chunk in chunks])
    assert len(stream) == size
    assert valid("signed-record", wrap.encoded)
    assert valid("key-wrap-payload", cbor2.loads(wrap.encoded).value[2])
    assert await world.patient.verify_audit() == (True, 1, "the audit chain verifies")


async def test_health_and_profile_answers_of_the_server(world: World) -> None:
    app = make_app(world.patient_home)
    answer = await health(make_mocked_request("GET", "/v0/health", app=app))
    assert isinstance(answer, web.Response) and isinstance(answer.body, bytes)
    _assert_body("health-answer", answer.body)
    answer = await profile(make_mocked_request("GET", "/v0/profile", app=app))
    assert isinstance(answer.body, bytes)
    assert valid("signed-record", answer.body)
    assert valid("node-profile-payload", cbor2.loads(answer.body).value[2])


# --- the bytes a served patient node answers ------------------------------------------------------


async def _served(home: NodeHome) -> tuple[web.AppRunner, str]:
    app = make_app(home)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    home.with_endpoint(url)  # the authority the node accepts in Host ([HTTP-9])
    return runner, url


async def _send(
    session: aiohttp.ClientSession,
    identity: SigningIdentity | None,
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    stream: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    fields: Any = {"Content-Type": "application/cbor", **(headers or {})}
    if identity is not None:
        fields = client_signing_headers(
            identity=identity,
            method=method,
            url=url,
            body=body,
            now=int(time.time()),
            nonce=base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="),
            headers=fields,
            streamed=stream is not None,
        )
    data = _stream(stream) if stream is not None else body
    async with session.request(method, url, data=data, headers=fields) as response:
        return response.status, await response.read()


async def _lab_grant(patient: PatientNode, audience: str, *, now: int) -> Signed[Grant]:
    """Lab results already in the record, to ``audience``, for 30 days."""
    return await patient.grant(
        audience=audience,
        scope=Scope(categories=("lab",), past=True),
        actions=("read",),
        purpose="treatment",
        days=30,
        now=now,
    )


async def test_bodies_answered_over_http(tmp_path: Path) -> None:
    now = int(time.time())
    patient_home = await _open_home(tmp_path / "patient", "patient", "Camille")
    clinic_home = await _open_home(tmp_path / "clinic", "clinic", "Laboratoire")
    runner, url = await _served(patient_home)
    clinic = clinic_home.identity
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            status, data = await _send(session, None, "GET", f"{url}/v0/health")
            assert status == 200
            _assert_body("health-answer", data)
            status, data = await _send(session, None, "GET", f"{url}/v0/profile")
            assert status == 200 and valid("signed-record", data)

            patient = runner.app[PATIENT]
            invitation = await patient.create_invitation(label="lab", now=now)
            request = encode_body(token=invitation.token, profile=clinic_home.profile.encoded)
            _assert_body("connect-request", request)
            status, data = await _send(session, clinic, "POST", f"{url}/v0/connect", request)
            assert status == 201, data
            _assert_body("connect-answer", data)
            deposit_grant = open_record(cbor.decode(data)["grant"], Grant)

            deposit, stream = _document(
                clinic_home, patient_home, deposit_grant.id, title="Ferritin", now=now
            )
            doc = open_record(deposit, Deposit).record.doc
            document_url = f"{url}/v0/documents/{doc.hex()}"
            deposit_field = {
                "Content-Type": "application/octet-stream",
                "Fedrecord-Deposit": base64.urlsafe_b64encode(deposit).decode().rstrip("="),
            }
            status, data = await _send(
                session, clinic, "PUT", document_url, stream=stream, headers=deposit_field
            )
            assert status == 201, data
            _assert_body("deposit-answer", data)
            status, data = await _send(
                session, clinic, "PUT", document_url, stream=stream, headers=deposit_field
            )
            assert (status, cbor.decode(data)["status"]) == (200, "known")
            _assert_body("deposit-answer", data)

            await patient.accept(doc, now=now)
            read_grant = await _lab_grant(patient, clinic_home.did, now=now)
            status, data = await _send(session, clinic, "POST", f"{url}/v0/state", encode_body())
            assert status == 200, data
            _assert_body("state-answer", data)
            assert len(cbor.decode(data)["grants"]) == 2

            request = encode_body(chain=[read_grant.encoded], profile=clinic_home.profile.encoded)
            status, data = await _send(session, clinic, "POST", f"{url}/v0/list", request)
            assert status == 200, data
            _assert_body("list-answer", data)
            assert [entry["doc"] for entry in cbor.decode(data)["documents"]] == [doc]

            # Refusals are error bodies: unsigned, and signed (a document that is not there).
            status, data = await _send(session, None, "POST", f"{url}/v0/state", encode_body())
            assert status == 401 and valid("error-body", data)
            receipt = sign_record(
                AccessReceipt(
                    patient=patient_home.did,
                    doc=os.urandom(32),
                    grant=read_grant.id,
                    action="read",
                    purpose="treatment",
                    iat=now,
                    nonce=os.urandom(16),
                ),
                clinic,
            )
            request = encode_body(chain=[read_grant.encoded], receipt=receipt.encoded)
            _assert_body("fetch-request", request)
            status, data = await _send(session, clinic, "POST", f"{url}/v0/fetch", request)
            assert status == 404 and valid("error-body", data)
            assert cbor.decode(data)["code"] == "not-found"
    finally:
        await runner.cleanup()
        await patient_home.close()
        await clinic_home.close()


async def test_events_of_a_served_node_are_state_answers(tmp_path: Path) -> None:
    """``POST /v0/events`` takes a state-request; each event's data is the base64url of a state-answer."""
    now = int(time.time())
    patient_home = await _open_home(tmp_path / "patient", "patient", "Camille")
    clinic_home = await _open_home(tmp_path / "clinic", "clinic", "Laboratoire")
    runner, url = await _served(patient_home)
    patient = runner.app[PATIENT]
    try:
        invitation = await patient.create_invitation(label="lab", now=now)
        await patient.connect(
            requester=clinic_home.did, token=invitation.token, profile=clinic_home.profile.encoded, now=now
        )
        request = encode_body()
        _assert_body("state-request", request)
        headers = client_signing_headers(
            identity=clinic_home.identity,
            method="POST",
            url=f"{url}/v0/events",
            body=request,
            now=now,
            nonce=base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="),
            headers={"Content-Type": "application/cbor"},
        )
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v0/events", data=request, headers=headers) as response,
        ):
            assert response.status == 200 and response.content_type == "text/event-stream"
            reader = EventStreamReader(max_event=1 << 21)
            events: list[ServerEvent] = []
            async with asyncio.timeout(10):
                async for chunk in response.content.iter_any():
                    events += reader.feed(chunk)
                    if events and len(cbor.decode(_data(events[-1]))["revocations"]) == 1:
                        break  # the state after the revocation (alone, or with the grant's)
                    if len(events) == 1:
                        # A change after the stream opened: a grant to the clinic, then its revocation.
                        granted = await _lab_grant(patient, clinic_home.did, now=now)
                        await patient.revoke(granted.id, now=now)
        assert len(events) >= 2
        for event in events:
            assert event.name == "state"
            _assert_body("state-answer", _data(event))
    finally:
        await runner.cleanup()
        await patient_home.close()
        await clinic_home.close()


def _data(event: ServerEvent) -> bytes:
    data = event.data
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


async def test_manage_bodies_answered_over_http(tmp_path: Path) -> None:
    """Every op of ``POST /v0/manage``, signed with the node's own key: requests and answers follow
    the rules of their op (spec section 15.19); another node's request is answered with an error body."""
    now = int(time.time())
    patient_home = await _open_home(tmp_path / "patient", "patient", "Camille")
    clinic_home = await _open_home(tmp_path / "clinic", "clinic", "Laboratoire")
    runner, url = await _served(patient_home)
    patient = runner.app[PATIENT]
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:

            async def manage(op: str, **args: Any) -> dict[str, Any]:
                request = encode_body(op=op, **args)
                _assert_manage(op, "request", request)
                status, data = await _send(
                    session, patient_home.identity, "POST", f"{url}/v0/manage", request
                )
                assert status == 200, cbor.decode(data)
                _assert_manage(op, "answer", data)
                answer: dict[str, Any] = cbor.decode(data)
                return answer

            invitation = Invitation.parse((await manage("invite", label="lab", ttl=DAY))["code"])
            deposit_grant = await patient.connect(
                requester=clinic_home.did,
                token=invitation.token,
                profile=clinic_home.profile.encoded,
                now=now,
            )
            docs = []
            for title in ("Ferritin", "Lipid panel", "Complete blood count"):
                deposit, stream = _document(clinic_home, patient_home, deposit_grant.id, title=title, now=now)
                await patient.receive_deposit(
                    requester=clinic_home.did, deposit=deposit, ciphertext=_stream(stream), now=now
                )
                docs.append(open_record(deposit, Deposit).record.doc)
            assert [item["doc"] for item in (await manage("inbox"))["items"]] == docs
            await manage("accept", doc=docs[0], labels=["PSY"])
            await manage("accept", doc=docs[1])
            await manage("reject", doc=docs[2])
            assert (await manage("label", doc=docs[0], labels=["SEX"]))["labels"] == ["PSY", "SEX"]
            await manage("hide", doc=docs[1], hidden=True)
            grant = sign_record(
                Grant(
                    audience=clinic_home.did,
                    scope=Scope(categories=("lab",), past=True),
                    actions=("read",),
                    purpose="treatment",
                    iat=now,
                    nbf=now,
                    exp=now + DAY,
                    nonce=os.urandom(16),
                ),
                patient_home.identity,
            )
            restriction = sign_record(
                PrivateRestriction(grants=(grant.id,), labels=("PSY",), iat=now), patient_home.identity
            )
            assert (await manage("keep", records=[grant.encoded, restriction.encoded]))["stored"] == 2
            await manage("revoke", grant=grant.id, reason="moved away")
            await manage("delete", doc=docs[0])
            assert (await manage("audit"))["entries"] == []  # nothing was fetched

            request = encode_body(op="inbox")
            status, data = await _send(session, clinic_home.identity, "POST", f"{url}/v0/manage", request)
            assert status == 403 and valid("error-body", data)
            assert cbor.decode(data)["code"] == "wrong-audience"
    finally:
        await runner.cleanup()
        await patient_home.close()
        await clinic_home.close()


async def test_clinic_manage_bodies_answered_over_http(tmp_path: Path) -> None:
    """Every op of ``POST /v0/manage`` on a served clinic, signed with the clinic's own key, run
    against a served patient node: requests and answers follow the rules of their op (spec section
    15.20); another node's request and a patient that does not answer get error bodies."""
    now = int(time.time())
    patient_home = await _open_home(tmp_path / "patient", "patient", "Camille")
    clinic_home = await _open_home(tmp_path / "clinic", "clinic", "Laboratoire")
    specialist_home = await _open_home(tmp_path / "specialist", "clinic", "Cardiologue")
    patient_runner, _patient_url = await _served(patient_home)
    clinic_runner, url = await _served(clinic_home)
    specialist_runner, specialist_url = await _served(specialist_home)
    patient = patient_runner.app[PATIENT]
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:

            async def manage(op: str, **args: Any) -> dict[str, Any]:
                request = encode_body(op=op, **args)
                _assert_clinic_manage(op, "request", request)
                status, data = await _send(session, clinic_home.identity, "POST", f"{url}/v0/manage", request)
                assert status == 200, cbor.decode(data)
                _assert_clinic_manage(op, "answer", data)
                answer: dict[str, Any] = cbor.decode(data)
                return answer

            invitation = await patient.create_invitation(label="lab", now=now)
            assert (await manage("connect", code=invitation.code()))["patient"] == patient_home.did
            them = {"patient": patient_home.did}
            doc = (
                await manage(
                    "deposit", **them, content=b"Ferritin 80 ng/mL\n", title="Ferritin", category="lab"
                )
            )["doc"]
            assert await manage("flush") == {"v": 0, "sent": 1, "pending": 0}
            await patient.accept(doc, now=now)
            await patient.grant(
                audience=clinic_home.did,
                scope=Scope(categories=("lab",), past=True),
                actions=("delegate", "read"),
                purpose="treatment",
                days=30,
                now=now,
            )
            assert (await manage("poll", **them))["grants"] == 2
            assert (await manage("fetch", **them, doc=doc))["content"] == b"Ferritin 80 ng/mL\n"
            assert (await manage("held", **them))["docs"] == [{"doc": doc, **them}]
            await manage("sync", **them, records_only=True)
            await manage("delegate", **them, to=specialist_home.did, endpoint=specialist_url, days=7)

            request = encode_body(op="flush")
            status, data = await _send(session, patient_home.identity, "POST", f"{url}/v0/manage", request)
            assert status == 403 and valid("error-body", data)
            assert cbor.decode(data)["code"] == "wrong-audience"
            await patient_runner.cleanup()
            status, data = await _send(
                session, clinic_home.identity, "POST", f"{url}/v0/manage", encode_body(op="poll", **them)
            )
            assert status == 502 and valid("error-body", data)
            assert cbor.decode(data)["code"] == "unreachable"
    finally:
        for runner in (patient_runner, clinic_runner, specialist_runner):
            await runner.cleanup()
        for runner in (clinic_runner, specialist_runner):
            await runner.app[CLINIC].client.close()
        for home in (patient_home, clinic_home, specialist_home):
            await home.close()
