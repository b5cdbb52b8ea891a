"""Replay one vector case against this implementation.

:func:`replay` returns ``None`` when the implementation agrees that a case is
valid and gives the expected outputs, or the error code it produced, so the
caller compares that with the case's ``error``.  An output that differs from
the vector raises :class:`Mismatch`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedrecord.core import (
    Deposit,
    EncryptionKeyPair,
    FedrecordError,
    KeyWrap,
    PrivateRestriction,
    Revocation,
    SigningIdentity,
    cbor,
    open_record,
)
from fedrecord.core.capabilities import RevocationSet, decide_from_bytes
from fedrecord.core.documents import DocumentReader
from fedrecord.core.identity import public_key_from_did
from fedrecord.core.key_wraps import open_deposit_key, unwrap_key, unwrap_keys
from fedrecord.core.reconcile import Item, Params, Reconciler, SortedItems, respond
from fedrecord.core.records import RECORD_CLASSES, RecordType
from fedrecord.core.sealed_box import open_sealed, seal
from fedrecord.core.signed import R, Signed
from fedrecord.core.stream import CHUNK_SIZE, HEADER_SIZE, TAG_SIZE, StreamDecryptor, StreamEncryptor

from .capability_cases import facts
from .format import diag
from .sync_cases import transcript


class Mismatch(AssertionError):
    """The implementation produced an output other than the vector's."""


def _expect(name: str, got: Any, want: Any) -> None:
    if got != want:
        raise Mismatch(f"{name}: got {got!r}, vector says {want!r}")


def _cbor(group: dict[str, Any], test: dict[str, Any]) -> None:
    value = cbor.decode(bytes.fromhex(test["input"]), max_size=group["maxSize"])
    _expect("diag", diag(value), test["diag"])


def _did(group: dict[str, Any], test: dict[str, Any]) -> None:
    if "seed" in test:
        identity = SigningIdentity.from_seed(bytes.fromhex(test["seed"]))
        _expect("did", identity.did, test["did"])
        _expect("publicKey", identity.public_key.hex(), test["publicKey"])
    _expect(
        "publicKey",
        public_key_from_did(test["did"]).hex(),
        test.get("publicKey", public_key_from_did(test["did"]).hex()),
    )


def _record(group: dict[str, Any], test: dict[str, Any]) -> None:
    record = bytes.fromhex(test["record"]) * test.get("recordRepeat", 1)
    signed = open_record(record, RECORD_CLASSES[RecordType(test["expectedType"])])
    _expect("signer", signed.signer, test["signer"])
    _expect("id", signed.id.hex(), test["id"])


def _opened(records: list[str], kind: type[R]) -> list[Signed[R]]:
    """The records that open as ``kind``: one that does not has no effect ([CAP-7], [CAP-13])."""
    opened = []
    for record in records:
        try:
            opened.append(open_record(bytes.fromhex(record), kind))
        except FedrecordError:
            continue
    return opened


def _capability(group: dict[str, Any], test: dict[str, Any]) -> str | None:
    decision = decide_from_bytes(
        [bytes.fromhex(link) for link in test["chain"]],
        head=bytes.fromhex(test["head"]) if test["head"] else None,
        highest_seq=test["highestSeq"],
        max_head_age=test["maxHeadAge"],
        patient=test["patient"],
        requester=test["requester"],
        action=test["action"],
        now=test["now"],
        revocations=RevocationSet.from_records(_opened(test["revocations"], Revocation)),
        restrictions=_opened(test["restrictions"], PrivateRestriction),
        document=facts(test["document"]) if test["document"] else None,
    )
    return None if decision.allowed else decision.reason.value if decision.reason else "denied"


def _stream_ciphertext(group: dict[str, Any], test: dict[str, Any]) -> bytes:
    if "ciphertext" in test:
        return bytes.fromhex(test["ciphertext"])
    source = bytes.fromhex(next(t for t in group["tests"] if t["tcId"] == test["ciphertextOf"])["ciphertext"])
    header, body = source[:HEADER_SIZE], source[HEADER_SIZE:]
    step = CHUNK_SIZE + TAG_SIZE
    return (
        header
        + b"".join(body[i * step : (i + 1) * step] for i in test["chunks"])
        + bytes.fromhex(test["append"])
    )


def _stream(group: dict[str, Any], test: dict[str, Any]) -> None:
    key = bytes.fromhex(test["key"])
    ciphertext = _stream_ciphertext(group, test)
    if test["result"] == "valid":
        plaintext = bytes.fromhex(test["plaintextHex"]) * test["plaintextRepeat"]
        encryptor = StreamEncryptor(key, bytes.fromhex(test["prefix"]))
        _expect("ciphertext", b"".join(encryptor.encrypt([plaintext])).hex(), test["ciphertext"])
        _expect("documentId", encryptor.document_id.hex(), test["documentId"])
    decryptor = StreamDecryptor(key)
    # Feed in odd-sized pieces: chunking of the input must not matter.
    pieces = [ciphertext[i : i + 1000] for i in range(0, len(ciphertext), 1000)] or [b""]
    plaintext = b"".join(decryptor.decrypt(pieces))
    if test["result"] == "valid":
        _expect("plaintext", plaintext, bytes.fromhex(test["plaintextHex"]) * test["plaintextRepeat"])


def _sealed(group: dict[str, Any], test: dict[str, Any]) -> None:
    if "ephemeralSeed" in test:
        sealed = seal(
            bytes.fromhex(test["message"]),
            bytes.fromhex(test["recipientPublicKey"]),
            bytes.fromhex(test["ephemeralSeed"]),
        )
        _expect("sealed", sealed.hex(), test["sealed"])
    keys = EncryptionKeyPair.from_seed(bytes.fromhex(test["recipientSeed"]))
    _expect("message", open_sealed(bytes.fromhex(test["sealed"]), keys).hex(), test["message"])


def _wrap(group: dict[str, Any], test: dict[str, Any]) -> None:
    keys = EncryptionKeyPair.from_seed(bytes.fromhex(test["recipientSeed"]))
    record = bytes.fromhex(test["record"])
    if test["recordType"] == "fedrecord/deposit":
        unwrapped = open_deposit_key(open_record(record, Deposit), patient=test["recipient"], keys=keys)
        _expect("doc", unwrapped.secret.doc.hex(), test["doc"])
    elif "docs" in test:
        # Several documents asked for at once ([WRAP-6]): doc, then docs.
        docs = [bytes.fromhex(d) for d in test["docs"]]
        doc = bytes.fromhex(test["doc"])
        found = unwrap_keys(
            open_record(record, KeyWrap), recipient=test["recipient"], keys=keys, documents=[doc, *docs]
        )
        _expect("documents", sorted(found), sorted([doc, *docs]))
        _expect("keys", [found[d].hex() for d in docs], test["keys"])
        _expect("key", found[doc].hex(), test["key"])
        return
    else:
        unwrapped = unwrap_key(
            open_record(record, KeyWrap),
            recipient=test["recipient"],
            keys=keys,
            doc=bytes.fromhex(test["doc"]),
        )
    _expect("key", unwrapped.key.hex(), test["key"])


def _document(group: dict[str, Any], test: dict[str, Any]) -> None:
    reader = DocumentReader(
        bytes.fromhex(test["key"]), expected_author=test["author"], expected_patient=test["patient"]
    )
    content = b"".join(reader.decrypt([bytes.fromhex(test["ciphertext"])]))
    _expect("content", content.hex(), test["content"])
    if "documentId" in test:
        _expect("documentId", reader.document_id.hex(), test["documentId"])


def _items(listed: list[list[Any]]) -> list[Item]:
    return [(ts, bytes.fromhex(item_id)) for ts, item_id in listed]


def _params(given: dict[str, int]) -> Params:
    return Params(
        branching=given["branching"],
        fp_len=given["fpLen"],
        id_list_threshold=given["idListThreshold"],
        prefix_len=given["prefixLen"],
        max_message=given["maxMessage"],
    )


def _sync_fingerprint(group: dict[str, Any], test: dict[str, Any]) -> None:
    items = SortedItems(_items(test["items"]))
    _expect("fingerprint", items.fingerprint(0, len(items), test["fpLen"]).hex(), test["fingerprint"])


def _sync_respond(group: dict[str, Any], test: dict[str, Any]) -> None:
    reply = respond(
        SortedItems(_items(test["responderItems"])), bytes.fromhex(test["message"]), _params(test["params"])
    )
    _expect("reply", reply.hex(), test["reply"])


def _sync_transcript(group: dict[str, Any], test: dict[str, Any]) -> None:
    got = transcript(_items(test["initiatorItems"]), _items(test["responderItems"]), _params(test["params"]))
    for name in ("messages", "need", "have"):
        _expect(name, got[name], test[name])


def _sync_initiator(group: dict[str, Any], test: dict[str, Any]) -> None:
    initiator = Reconciler(SortedItems(_items(test["initiatorItems"])), _params(test["params"]))
    answers: list[str | None] = [initiator.initiate().hex()]
    for reply in test["replies"]:
        answer = initiator.receive(bytes.fromhex(reply))  # an invalid case's last reply raises here
        answers.append(None if answer is None else answer.hex())
    _expect("answers", answers, test["answers"])
    _expect("need", sorted(i.hex() for i in initiator.need), test["need"])
    _expect("have", sorted(i.hex() for i in initiator.have), test["have"])


RUNNERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], str | None]] = {
    "CborStrictDecode": _cbor,
    "DidKey": _did,
    "SignedRecordOpen": _record,
    "CapabilityDecision": _capability,
    "StreamDecrypt": _stream,
    "SealedBox": _sealed,
    "KeyWrapOpen": _wrap,
    "DocumentDecrypt": _document,
    "SyncFingerprint": _sync_fingerprint,
    "SyncRespond": _sync_respond,
    "SyncTranscript": _sync_transcript,
    "SyncInitiator": _sync_initiator,
}


def replay(group: dict[str, Any], test: dict[str, Any]) -> str | None:
    """Run ``test`` of ``group``; the error code produced, or None when it succeeded.

    Raises:
        Mismatch: a valid case produced other outputs than the vector's.
    """
    try:
        return RUNNERS[group["type"]](group, test)
    except FedrecordError as exc:
        return exc.code.value
