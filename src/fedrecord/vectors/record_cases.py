"""Vectors for signed records: COSE_Sign1 with Ed25519 and the record payloads (spec sections 5-6)."""

from __future__ import annotations

from typing import Any

import cbor2

from fedrecord.core import RecordType, SigningIdentity, sign_record
from fedrecord.core.cose import sig_structure
from fedrecord.core.signed import record_id

from .format import VectorFile, diag_bytes
from .samples import MALLORY, PATIENT, sample_records

NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A well-formed record correctly signed by its signer."},
    "WrongTag": {"bugType": "MODIFIED_SIGNATURE", "description": "COSE tag changed or removed ([SIG-2])."},
    "ChangedSignature": {
        "bugType": "MODIFIED_SIGNATURE",
        "description": "Signature bytes altered ([SIG-8]).",
    },
    "ChangedPayload": {"bugType": "MODIFIED_SIGNATURE", "description": "Signed bytes altered after signing."},
    "ChangedAlgorithm": {
        "bugType": "ALGORITHM_CONFUSION",
        "description": "Protected alg is not EdDSA (-8), including absent or a text value ([SIG-3]).",
    },
    "AddedProtected": {
        "bugType": "CAN_OF_WORMS",
        "description": "Protected header has an extra parameter ([SIG-5]).",
    },
    "RemovedProtected": {
        "bugType": "CAN_OF_WORMS",
        "description": "Protected header lacks kid or typ ([SIG-5]).",
    },
    "UnprotectedHeader": {
        "bugType": "CAN_OF_WORMS",
        "description": "Unprotected header not empty ([SIG-4]).",
    },
    "WrongType": {
        "bugType": "TYPE_CONFUSION",
        "description": "Record type other than the one expected ([SIG-6]).",
    },
    "WrongSigner": {
        "bugType": "MODIFIED_SIGNATURE",
        "description": "Signed by a key other than kid ([SIG-8]).",
    },
    "BadKey": {
        "bugType": "WEAK_PUBLIC_KEY",
        "description": "kid is no usable Ed25519 did:key ([SIG-7], [ID-3]).",
    },
    "Shape": {"bugType": "MALFORMED", "description": "Not a four-element COSE_Sign1 array ([SIG-2])."},
    "Encoding": {
        "bugType": "MALLEABILITY",
        "description": "Signed bytes not in strict deterministic CBOR ([SIG-1]).",
    },
    "Version": {"bugType": "EDGE_CASE", "description": "Protocol version not spoken ([REC-3])."},
    "Payload": {
        "bugType": "MALFORMED",
        "description": "Payload breaks a field rule of its record type ([REC-*]).",
    },
}

ALG, KID, TYP = 1, 4, 16


def forge(
    protected: dict[int, Any] | bytes,
    payload: dict[str, Any] | bytes,
    signer: SigningIdentity,
    *,
    unprotected: dict[int, Any] | None = None,
    tag: int | None = 18,
    signature: bytes | None = None,
) -> bytes:
    """A COSE_Sign1 built by hand, so that every field can be wrong on purpose."""
    protected_bytes = protected if isinstance(protected, bytes) else cbor2.dumps(protected, canonical=True)
    payload_bytes = payload if isinstance(payload, bytes) else cbor2.dumps(payload, canonical=True)
    if signature is None:
        signature = signer.sign(sig_structure(protected_bytes, payload_bytes))
    message = [protected_bytes, unprotected or {}, payload_bytes, signature]
    return cbor2.dumps(cbor2.CBORTag(tag, message) if tag is not None else message, canonical=True)


def _headers(signer: SigningIdentity, typ: str = RecordType.GRANT.value) -> dict[int, Any]:
    return {ALG: -8, KID: signer.did.encode(), TYP: typ}


def _flip(data: bytes, index: int) -> str:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return changed.hex()


def build() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-signed-records",
        header=[
            "Signed records: a tagged COSE_Sign1, EdDSA over Ed25519, protected header exactly",
            "{1: -8, 4: kid = the signer's did:key as bytes, 16: typ = the record type}, empty",
            "unprotected header, payload a strict CBOR map of the record's fields (spec sections 5-6).",
            "Open `record` (hex) expecting type `expectedType`. A valid case yields `signer`, `id`",
            "(SHA-256 of 'fedrecord/v0/record-id' || the Sig_structure `toBeSigned`) and `payload`",
            "(diagnostic notation); an invalid one is refused with `error`. Where `recordRepeat` is",
            "given, the input is `record` repeated that many times.",
        ],
        notes=NOTES,
    )
    valid = file.group("SignedRecordOpen", "each record type, correctly signed")
    for comment, record, signer in sample_records():
        signed = sign_record(record, signer)
        protected = cbor2.dumps(_headers(signer, record.TYPE.value), canonical=True)
        payload_bytes = cbor2.dumps(record.to_wire(), canonical=True)
        to_be_signed = sig_structure(protected, payload_bytes)
        assert record_id(to_be_signed) == signed.id
        file.case(
            valid,
            comment,
            result="valid",
            flags=["Valid"],
            signerSeed=_seed_of(signer).hex(),
            expectedType=record.TYPE.value,
            record=signed.encoded.hex(),
            signer=signer.did,
            toBeSigned=to_be_signed.hex(),
            id=signed.id.hex(),
            payload=diag_bytes(payload_bytes),
            diag=diag_bytes(signed.encoded),
        )

    grant_comment, grant, _ = next(s for s in sample_records() if s[1].TYPE is RecordType.GRANT)
    good = sign_record(grant, PATIENT).encoded
    payload: dict[str, Any] = grant.to_wire()
    head = _headers(PATIENT)
    mutations = file.group("SignedRecordOpen", f"mutations of one record ({grant_comment})")

    def bad(
        comment: str, flag: str, error: str, record: bytes | str, expected: str = "fedrecord/grant"
    ) -> None:
        hex_record = record.hex() if isinstance(record, bytes) else record
        file.case(
            mutations,
            comment,
            result="invalid",
            flags=[flag],
            error=error,
            expectedType=expected,
            record=hex_record,
        )

    file.case(
        mutations,
        "the unmodified record",
        result="valid",
        flags=["Valid"],
        expectedType="fedrecord/grant",
        record=good.hex(),
        signer=PATIENT.did,
        id=sign_record(grant, PATIENT).id.hex(),
    )
    bad(
        "COSE tag 998 instead of 18 (sign-fail-01)",
        "WrongTag",
        "forbidden-tag",
        forge(head, payload, PATIENT, tag=998),
    )
    bad(
        "COSE tag removed (sign-pass-03, refused here)",
        "WrongTag",
        "bad-header",
        forge(head, payload, PATIENT, tag=None),
    )
    bad("tag 17 (COSE_Mac0)", "WrongTag", "forbidden-tag", forge(head, payload, PATIENT, tag=17))
    bad(
        "last signature bit flipped (sign-fail-02)",
        "ChangedSignature",
        "bad-signature",
        _flip(good, len(good) - 1),
    )
    bad("first signature bit flipped", "ChangedSignature", "bad-signature", _flip(good, len(good) - 64))
    bad(
        "signature of 63 bytes",
        "ChangedSignature",
        "bad-signature",
        forge(head, payload, PATIENT, signature=PATIENT.sign(b"x")[:63]),
    )
    bad(
        "signature all zero",
        "ChangedSignature",
        "bad-signature",
        forge(head, payload, PATIENT, signature=bytes(64)),
    )
    changed_payload = dict(payload, purpose="research")
    bad(
        "payload changed after signing",
        "ChangedPayload",
        "bad-signature",
        forge(head, changed_payload, PATIENT, signature=forge_signature(head, payload, PATIENT)),
    )
    bad(
        "alg -999 (sign-fail-03)",
        "ChangedAlgorithm",
        "unsupported-algorithm",
        forge({**head, ALG: -999}, payload, PATIENT),
    )
    bad(
        "alg 'unknown' (sign-fail-04)",
        "ChangedAlgorithm",
        "unsupported-algorithm",
        forge({**head, ALG: "unknown"}, payload, PATIENT),
    )
    bad(
        "alg -7 (ES256)",
        "ChangedAlgorithm",
        "unsupported-algorithm",
        forge({**head, ALG: -7}, payload, PATIENT),
    )
    bad(
        "alg absent",
        "ChangedAlgorithm",
        "unsupported-algorithm",
        forge({KID: head[KID], TYP: head[TYP]}, payload, PATIENT),
    )
    bad("empty protected header", "ChangedAlgorithm", "unsupported-algorithm", forge(b"", payload, PATIENT))
    bad(
        "protected content type added (sign-fail-06)",
        "AddedProtected",
        "bad-header",
        forge({**head, 3: 0}, payload, PATIENT),
    )
    bad("protected crit added", "AddedProtected", "bad-header", forge({**head, 2: [16]}, payload, PATIENT))
    bad(
        "protected kid removed (sign-fail-07)",
        "RemovedProtected",
        "bad-header",
        forge({ALG: -8, TYP: head[TYP]}, payload, PATIENT),
    )
    bad(
        "protected typ removed",
        "RemovedProtected",
        "bad-header",
        forge({ALG: -8, KID: head[KID]}, payload, PATIENT),
    )
    bad(
        "kid moved to the unprotected header",
        "UnprotectedHeader",
        "bad-header",
        forge({ALG: -8, TYP: head[TYP]}, payload, PATIENT, unprotected={KID: head[KID]}),
    )
    bad(
        "unprotected header repeats kid",
        "UnprotectedHeader",
        "bad-header",
        forge(head, payload, PATIENT, unprotected={KID: head[KID]}),
    )
    bad("grant opened as a revocation", "WrongType", "wrong-type", good, expected="fedrecord/revocation")
    bad(
        "typ of another record type, re-signed",
        "WrongType",
        "wrong-type",
        forge({**head, TYP: "fedrecord/state-head"}, payload, PATIENT),
    )
    bad("typ unknown", "WrongType", "wrong-type", forge({**head, TYP: "fedrecord/grant2"}, payload, PATIENT))
    bad("typ as an integer", "WrongType", "wrong-type", forge({**head, TYP: 61}, payload, PATIENT))
    bad(
        "kid names the patient, signed by another key",
        "WrongSigner",
        "bad-signature",
        forge(head, payload, MALLORY),
    )
    bad(
        "kid is a small-order key (the identity point)",
        "BadKey",
        "bad-key",
        forge({**head, KID: _small_order_did().encode()}, payload, PATIENT),
    )
    bad(
        "kid is an X25519 did:key",
        "BadKey",
        "bad-key",
        forge({**head, KID: b"did:key:z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"}, payload, PATIENT),
    )
    bad("kid is not a did", "BadKey", "bad-key", forge({**head, KID: b"patient"}, payload, PATIENT))
    bad("kid as a text string", "BadKey", "bad-header", forge({**head, KID: PATIENT.did}, payload, PATIENT))
    bad(
        "three-element array",
        "Shape",
        "bad-header",
        cbor2.dumps(cbor2.CBORTag(18, cbor2.loads(good).value[:3])),
    )
    bad(
        "payload nil (detached)",
        "Shape",
        "bad-header",
        cbor2.dumps(cbor2.CBORTag(18, [cbor2.loads(good).value[0], {}, None, bytes(64)])),
    )
    bad("trailing byte after the record", "Encoding", "trailing-bytes", good + b"\x00")
    file.case(
        mutations,
        "65537 bytes: over the cap before anything is parsed",
        result="invalid",
        flags=["Encoding"],
        error="too-large",
        expectedType="fedrecord/grant",
        record="d2",
        recordRepeat=65537,
    )
    bad(
        "protected header with a non-shortest integer",
        "Encoding",
        "non-canonical",
        forge(
            bytes.fromhex("a301380704")
            + cbor2.dumps(head[KID])
            + bytes.fromhex("10")
            + cbor2.dumps(head[TYP]),
            payload,
            PATIENT,
        ),
    )
    bad(
        "payload keys out of order, signed",
        "Encoding",
        "non-canonical",
        forge(head, _reversed_map(payload), PATIENT),
    )
    bad(
        "payload with a float, signed",
        "Encoding",
        "unsupported-type",
        forge(head, cbor2.dumps({**payload, "exp": float(payload["exp"])}, canonical=True), PATIENT),
    )
    bad(
        "payload version 1, signed",
        "Version",
        "unsupported-version",
        forge(head, {**payload, "v": 1}, PATIENT),
    )
    bad(
        "payload without a version, signed",
        "Version",
        "unsupported-version",
        forge(head, {k: v for k, v in payload.items() if k != "v"}, PATIENT),
    )
    bad(
        "payload with an unknown field, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "x": 1}, PATIENT),
    )
    bad(
        "grant without expiry, signed",
        "Payload",
        "invalid-record",
        forge(head, {k: v for k, v in payload.items() if k != "exp"}, PATIENT),
    )
    bad(
        "grant expiring before it starts, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "exp": payload["nbf"]}, PATIENT),
    )
    bad(
        "grant with an unknown action, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "act": ["read", "write"]}, PATIENT),
    )
    bad(
        "grant with actions out of order, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "act": ["read", "delegate"]}, PATIENT),
    )
    bad(
        "grant with a 15-byte nonce, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "nonce": payload["nonce"][:15]}, PATIENT),
    )
    bad(
        "grant audience not a did, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "aud": "gp.example"}, PATIENT),
    )
    bad(
        "read grant covering no document, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "scope": {"past": False, "future": False}}, PATIENT),
    )
    bad("payload an array, signed", "Payload", "invalid-record", forge(head, cbor2.dumps([1]), PATIENT))
    bad(
        "grant with a negative time, signed",
        "Payload",
        "invalid-record",
        forge(head, {**payload, "nbf": -1}, PATIENT),
    )
    return file


def forge_signature(protected: dict[int, Any], payload: dict[str, Any], signer: SigningIdentity) -> bytes:
    return signer.sign(
        sig_structure(cbor2.dumps(protected, canonical=True), cbor2.dumps(payload, canonical=True))
    )


def _reversed_map(payload: dict[str, Any]) -> bytes:
    """The payload with its keys in descending order: same content, non-canonical bytes."""
    items = sorted(payload.items(), key=lambda kv: (len(kv[0].encode()), kv[0].encode()), reverse=True)
    out = bytearray(cbor2.dumps({}, canonical=True))
    out[0] = 0xA0 + len(items)
    for key, value in items:
        out += cbor2.dumps(key) + cbor2.dumps(value, canonical=True)
    return bytes(out)


def _small_order_did() -> str:
    from fedrecord.core.identity import DID_KEY_PREFIX, _b58encode

    return DID_KEY_PREFIX + _b58encode(b"\xed\x01" + bytes.fromhex("01" + "00" * 31))


def _seed_of(identity: SigningIdentity) -> bytes:
    return identity.seed
