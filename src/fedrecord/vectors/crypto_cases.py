"""Vectors for document encryption, sealed boxes, key wraps and documents (spec sections 8-9)."""

from __future__ import annotations

from typing import Any

from fedrecord.core import DocumentHeader, EncryptionKeyPair, KeyWrap, cbor, sign_record
from fedrecord.core.documents import DocumentWriter
from fedrecord.core.key_wraps import DEPOSIT_PURPOSE, make_deposit, wrap_key, wrap_keys
from fedrecord.core.records import Deposit, RecordType, WrapSecret
from fedrecord.core.sealed_box import seal
from fedrecord.core.stream import CHUNK_SIZE, HEADER_SIZE, TAG_SIZE, encrypt_bytes, key_commitment

from .format import VectorFile, diag_bytes, fixed_seed
from .record_cases import forge
from .samples import (
    BATCH_DOC_IDS,
    DOC_ID,
    GP,
    GP_ENC,
    GRANT_ID,
    LAB,
    MALLORY,
    NOW,
    OTHER_DOC_ID,
    PATIENT,
    PATIENT_ENC,
    THIRD_DOC_ID,
)

STREAM_NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A stream that decrypts."},
    "Truncated": {"bugType": "TRUNCATION", "description": "Stream cut short ([ENC-5])."},
    "Extended": {"bugType": "TRUNCATION", "description": "Data after the final chunk ([ENC-5])."},
    "Reordered": {"bugType": "MODIFIED_CIPHERTEXT", "description": "Chunks swapped or dropped ([ENC-5])."},
    "Tampered": {
        "bugType": "MODIFIED_CIPHERTEXT",
        "description": "A ciphertext or tag bit changed ([ENC-4]).",
    },
    "Commitment": {"bugType": "KEY_COMMITMENT", "description": "Commitment not that of the key ([ENC-2])."},
    "Header": {
        "bugType": "MALFORMED",
        "description": "Stream header not MAGIC || prefix || commitment ([ENC-1]).",
    },
}


def _chunks(stream: bytes) -> list[bytes]:
    body = stream[HEADER_SIZE:]
    step = CHUNK_SIZE + TAG_SIZE
    return [body[i : i + step] for i in range(0, len(body), step)]


def build_stream() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-stream",
        header=[
            "STREAM document encryption (spec section 8): XChaCha20-Poly1305, 64 KiB chunks, nonce =",
            "prefix (16) || chunk counter (7, big-endian) || last flag (1), AAD = the 52-byte stream header",
            "MAGIC 'FRD' 00 || prefix || SHA-256('fedrecord/v0/key-commitment' || key || prefix).",
            "`plaintext` is `plaintextHex` repeated `plaintextRepeat` times. Valid cases: encrypting with",
            "`key` and `prefix` gives `ciphertext` and `documentId` (SHA-256 of 'fedrecord/v0/document-id'",
            "|| ciphertext); decrypting gives the plaintext back. Invalid: decrypting `ciphertext` with",
            "`key` is refused with `error`. Some invalid ciphertexts are given as `ciphertextOf` (the",
            "tcId of a valid case), `chunks` (indices of that case's 65552-byte sealed chunks, in order)",
            "and `append` (hex): the stream header of that case, those chunks, then `append`.",
        ],
        notes=STREAM_NOTES,
    )
    tests = file.group("StreamDecrypt", "documents as STREAM ciphertexts")
    key, prefix = fixed_seed("stream-key"), fixed_seed("stream-prefix")[:16]

    def valid(comment: str, unit: bytes, repeat: int) -> bytes:
        ciphertext, document_id = encrypt_bytes(key, prefix, unit * repeat)
        file.case(
            tests,
            comment,
            result="valid",
            flags=["Valid"],
            key=key.hex(),
            prefix=prefix.hex(),
            plaintextHex=unit.hex(),
            plaintextRepeat=repeat,
            ciphertext=ciphertext.hex(),
            documentId=document_id.hex(),
        )
        return ciphertext

    def invalid(comment: str, flag: str, error: str, ciphertext: bytes, with_key: bytes = key) -> None:
        file.case(
            tests,
            comment,
            result="invalid",
            flags=[flag],
            error=error,
            key=with_key.hex(),
            ciphertext=ciphertext.hex(),
        )

    valid("empty document: one empty final chunk", b"", 0)
    small = valid("short document", b"Hemoglobin 14.1 g/dL\n", 3)
    full = valid("exactly one chunk: the final chunk is full-size", b"\xab", CHUNK_SIZE)
    three = valid("three chunks", b"\x01\x02", CHUNK_SIZE + 3)
    three_id = tests[-1]["tcId"]
    chunks = _chunks(three)

    def assembled(comment: str, flag: str, error: str, order: list[int], append: bytes = b"") -> None:
        """An invalid stream made of the header and chunks of the three-chunk case, in ``order``."""
        file.case(
            tests,
            comment,
            result="invalid",
            flags=[flag],
            error=error,
            key=key.hex(),
            ciphertextOf=three_id,
            chunks=order,
            append=append.hex(),
        )

    assembled("cut at a chunk boundary: the final flag is missing", "Truncated", "truncated", [0, 1])
    assembled("cut after the first chunk", "Truncated", "truncated", [0])
    assembled("only the stream header", "Truncated", "truncated", [])
    assembled("final chunk shorter than a tag", "Truncated", "truncated", [0, 1], chunks[2][:10])
    assembled("chunks swapped", "Reordered", "decrypt-failed", [1, 0, 2])
    assembled("middle chunk dropped", "Reordered", "decrypt-failed", [0, 2])
    assembled("first chunk repeated", "Reordered", "decrypt-failed", [0, 0, 2])
    invalid("cut inside the stream header", "Truncated", "truncated", small[:30])
    invalid("cut inside the final chunk", "Truncated", "decrypt-failed", small[:-1])
    file.case(
        tests,
        "junk after a full-size final chunk",
        result="invalid",
        flags=["Extended"],
        error="extended",
        key=key.hex(),
        ciphertextOf=tests[2]["tcId"],
        chunks=[0],
        append=(b"\x00" * 17).hex(),
    )
    file.case(
        tests,
        "a valid chunk of the same key and prefix appended after a full final chunk",
        result="invalid",
        flags=["Extended"],
        error="extended",
        key=key.hex(),
        ciphertextOf=tests[2]["tcId"],
        chunks=[0],
        append=chunks[2].hex(),
    )
    del full
    for index, comment in ((HEADER_SIZE, "first ciphertext bit"), (len(small) - 1, "last tag bit")):
        changed = bytearray(small)
        changed[index] ^= 1
        invalid(f"{comment} flipped", "Tampered", "decrypt-failed", bytes(changed))
    for index, comment in ((4, "prefix"), (HEADER_SIZE - 1, "commitment")):
        changed = bytearray(small)
        changed[index] ^= 1
        invalid(f"a bit of the {comment} flipped", "Commitment", "bad-commitment", bytes(changed))
    invalid(
        "decrypted with another key", "Commitment", "bad-commitment", small, with_key=fixed_seed("other-key")
    )
    invalid("magic changed", "Header", "malformed", b"FRE" + small[3:])
    invalid("format version 1", "Header", "malformed", b"FRD\x01" + small[4:])
    return file


SEAL_NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A sealed box libsodium's crypto_box_seal_open opens."},
    "LowOrder": {
        "bugType": "WEAK_PUBLIC_KEY",
        "description": "Recipient X25519 key of low order ([SEAL-2]).",
    },
    "Tampered": {
        "bugType": "MODIFIED_CIPHERTEXT",
        "description": "A sealed box that must not open ([SEAL-3]).",
    },
}

LOW_ORDER_X25519 = [
    ("zero", "00" * 32),
    ("one", "01" + "00" * 31),
    ("order 8", "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    ("order 8, twin", "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    ("p - 1", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def build_sealed_box() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-sealed-box",
        header=[
            "Sealed boxes from a caller-given ephemeral seed (spec section 9.1): ephemeral pair =",
            "crypto_box_seed_keypair(`ephemeralSeed`), nonce = BLAKE2b-192(epk || recipient pk), box =",
            "epk || crypto_box_easy(message, nonce, recipient pk, esk). Valid: sealing `message` to the",
            "key of `recipientSeed` gives `sealed`, which crypto_box_seal_open opens. Invalid: sealing to",
            "`recipientPublicKey`, or opening `sealed` with the key of `recipientSeed`, fails with `error`.",
        ],
        notes=SEAL_NOTES,
    )
    tests = file.group("SealedBox", "sealing and opening")
    recipient_seed = fixed_seed("seal-recipient")
    recipient = EncryptionKeyPair.from_seed(recipient_seed)
    sealed_ones: list[bytes] = []
    for comment, message in (
        ("empty message", b""),
        ("a document key", fixed_seed("a key")),
        ("a longer message", bytes(range(200))),
    ):
        ephemeral = fixed_seed(f"ephemeral:{comment}")
        sealed = seal(message, recipient.public_key, ephemeral)
        sealed_ones.append(sealed)
        file.case(
            tests,
            comment,
            result="valid",
            flags=["Valid"],
            recipientSeed=recipient_seed.hex(),
            recipientPublicKey=recipient.public_key.hex(),
            ephemeralSeed=ephemeral.hex(),
            message=message.hex(),
            sealed=sealed.hex(),
        )
    for name, public in LOW_ORDER_X25519:
        file.case(
            tests,
            f"recipient key of low order: {name}",
            result="invalid",
            flags=["LowOrder"],
            error="bad-key",
            recipientPublicKey=public,
            ephemeralSeed=fixed_seed("e").hex(),
            message="00",
        )
    sealed = sealed_ones[1]
    for index, comment in ((0, "ephemeral key"), (40, "tag"), (len(sealed) - 1, "ciphertext")):
        changed = bytearray(sealed)
        changed[index] ^= 1
        file.case(
            tests,
            f"a bit of the {comment} flipped",
            result="invalid",
            flags=["Tampered"],
            error="decrypt-failed",
            recipientSeed=recipient_seed.hex(),
            sealed=changed.hex(),
        )
    file.case(
        tests,
        "shorter than the overhead",
        result="invalid",
        flags=["Tampered"],
        error="decrypt-failed",
        recipientSeed=recipient_seed.hex(),
        sealed=sealed[:47].hex(),
    )
    file.case(
        tests,
        "opened by another recipient",
        result="invalid",
        flags=["Tampered"],
        error="decrypt-failed",
        recipientSeed=fixed_seed("someone else").hex(),
        sealed=sealed.hex(),
    )
    return file


WRAP_NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A wrap whose sealed binding matches its record."},
    "Moved": {
        "bugType": "KEY_SUBSTITUTION",
        "description": "Wrap bound to another document, reader or purpose ([WRAP-3]).",
    },
    "Sealed": {"bugType": "MODIFIED_CIPHERTEXT", "description": "The sealed key does not open ([WRAP-2])."},
    "Batch": {
        "bugType": "KEY_SUBSTITUTION",
        "description": "A wrap of several documents that is not for the documents asked for, whose"
        " sealed documents or keys disagree with its record, or a deposit carrying several keys ([WRAP-6]).",
    },
}


def build_key_wraps() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-key-wraps",
        header=[
            "Key wraps and deposits (spec section 9). Open the signed `record` (a key-wrap or deposit),",
            "then its sealed key with the X25519 key of `recipientSeed`, as `recipient` asking for",
            "document `doc`. Valid: the key is `key`. Invalid: refused with `error`, `wrap-mismatch`",
            "when the sealed binding (document, recipient, wrapper, purpose, grant) disagrees with the",
            "signed record or with the request. Where `docs` is given (hex ids), the reader asks for",
            "several documents, `doc` then `docs` (a batch, [WRAP-6]); valid such cases also give `keys`,",
            "the key of each id of `docs`, in order.",
        ],
        notes=WRAP_NOTES,
    )
    tests = file.group("KeyWrapOpen", "opening key wraps and deposits")
    key = fixed_seed("wrapped-key")

    def wrap(**changes: Any) -> Any:
        fields: dict[str, Any] = dict(
            wrapper=PATIENT,
            recipient=GP.did,
            recipient_key=GP_ENC.public_key,
            doc=DOC_ID,
            key=key,
            purpose="treatment",
            grant=GRANT_ID,
            iat=NOW,
            ephemeral_seed=fixed_seed("wrap-ephemeral"),
        )
        fields.update(changes)
        return wrap_key(**fields)

    def case(
        comment: str,
        flag: str,
        error: str | None,
        record: bytes,
        *,
        kind: str = "fedrecord/key-wrap",
        recipient: str = GP.did,
        seed: bytes = fixed_seed("gp-encryption"),
        doc: bytes = DOC_ID,
        docs: tuple[bytes, ...] | None = None,
        keys: tuple[bytes, ...] | None = None,
    ) -> None:
        file.case(
            tests,
            comment,
            result="valid" if error is None else "invalid",
            flags=[flag],
            error=error,
            recordType=kind,
            record=record.hex(),
            recipient=recipient,
            recipientSeed=seed.hex(),
            doc=doc.hex(),
            **({"docs": [d.hex() for d in docs]} if docs is not None else {}),
            **({"key": key.hex()} if error is None else {}),
            **({"keys": [k.hex() for k in keys]} if error is None and keys is not None else {}),
            **({"diag": diag_bytes(record)} if error is None else {}),
        )

    good = wrap()
    case("a key wrap from the patient to a GP", "Valid", None, good.encoded)
    case("asked for another document", "Moved", "wrap-mismatch", good.encoded, doc=OTHER_DOC_ID)
    case("opened by another reader", "Moved", "wrap-mismatch", good.encoded, recipient=MALLORY.did)
    moved = sign_record(KeyWrap(**{**_fields(good.record), "doc": OTHER_DOC_ID}), PATIENT)
    case(
        "outer document changed and re-signed: moved to another document",
        "Moved",
        "wrap-mismatch",
        moved.encoded,
        doc=OTHER_DOC_ID,
    )
    repurposed = sign_record(KeyWrap(**{**_fields(good.record), "purpose": "research"}), PATIENT)
    case("outer purpose changed and re-signed", "Moved", "wrap-mismatch", repurposed.encoded)
    regranted = sign_record(KeyWrap(**{**_fields(good.record), "grant": OTHER_DOC_ID}), PATIENT)
    case("outer grant changed and re-signed", "Moved", "wrap-mismatch", regranted.encoded)
    case(
        "re-signed by someone who is not the wrapper",
        "Moved",
        "wrap-mismatch",
        sign_record(good.record, MALLORY).encoded,
    )
    readdressed = sign_record(KeyWrap(**{**_fields(good.record), "recipient": MALLORY.did}), PATIENT)
    case(
        "outer recipient changed and re-signed",
        "Moved",
        "wrap-mismatch",
        readdressed.encoded,
        recipient=MALLORY.did,
    )
    other_key = sign_record(
        KeyWrap(**{**_fields(good.record), "recipient_key": PATIENT_ENC.public_key}), PATIENT
    )
    case("names an encryption key the reader does not hold", "Moved", "wrap-mismatch", other_key.encoded)
    sealed = bytearray(good.record.sealed)
    sealed[-1] ^= 1
    broken = sign_record(KeyWrap(**{**_fields(good.record), "sealed": bytes(sealed)}), PATIENT)
    case("sealed key altered and re-signed", "Sealed", "decrypt-failed", broken.encoded)
    garbage = sign_record(
        KeyWrap(**{**_fields(good.record), "sealed": seal(b"\xa0", GP_ENC.public_key, fixed_seed("g"))}),
        PATIENT,
    )
    case("sealed plaintext is not a binding", "Moved", "wrap-mismatch", garbage.encoded)

    deposit = make_deposit(
        depositor=LAB,
        patient=PATIENT.did,
        patient_key=PATIENT_ENC.public_key,
        doc=DOC_ID,
        size=4096,
        key=key,
        grant=GRANT_ID,
        iat=NOW,
        ephemeral_seed=fixed_seed("deposit-e"),
    )
    patient_seed = fixed_seed("patient-encryption")
    case(
        "a deposit from a lab",
        "Valid",
        None,
        deposit.encoded,
        kind="fedrecord/deposit",
        recipient=PATIENT.did,
        seed=patient_seed,
    )
    case(
        "a deposit re-signed by another clinic",
        "Moved",
        "wrap-mismatch",
        sign_record(deposit.record, MALLORY).encoded,
        kind="fedrecord/deposit",
        recipient=PATIENT.did,
        seed=patient_seed,
    )
    case(
        "a deposit for another patient",
        "Moved",
        "wrap-mismatch",
        deposit.encoded,
        kind="fedrecord/deposit",
        recipient=GP.did,
        seed=patient_seed,
    )
    _batch_cases(case, key, patient_seed)
    return file


def _batch_cases(case: Any, key: bytes, patient_seed: bytes) -> None:
    """Key wraps of several documents ([WRAP-6], spec 15.21), and a deposit that carries several keys."""
    docs = BATCH_DOC_IDS
    keys = tuple(fixed_seed(f"batch-key-{i}") for i in range(len(docs)))
    fourth = fixed_seed("fourth-document-id")

    def secret(**changes: Any) -> dict[str, Any]:
        """The wire map of the sealed secret of the good batch wrap, changed: may break 6.7 on purpose."""
        fields = WrapSecret(
            key=key,
            doc=DOC_ID,
            recipient=GP.did,
            wrapper=PATIENT.did,
            purpose="treatment",
            grant=GRANT_ID,
            docs=docs,
            keys=keys,
        ).to_wire()
        fields.update(changes)
        return fields

    def resealed(fields: dict[str, Any], **outer: Any) -> bytes:
        sealed = seal(cbor.encode(fields), GP_ENC.public_key, fixed_seed("batch-reseal"))
        return sign_record(KeyWrap(**{**_fields(good.record), "sealed": sealed, **outer}), PATIENT).encoded

    good = wrap_keys(
        wrapper=PATIENT,
        recipient=GP.did,
        recipient_key=GP_ENC.public_key,
        keys=[(DOC_ID, key), *zip(docs, keys, strict=True)],
        purpose="treatment",
        grant=GRANT_ID,
        iat=NOW,
        ephemeral_seed=fixed_seed("batch-wrap-ephemeral"),
    )
    assert good.record.docs == docs
    case(
        "a key wrap of three documents from the patient to a GP",
        "Valid",
        None,
        good.encoded,
        docs=docs,
        keys=keys,
    )
    case("a wrap of three documents opened as the wrap of one", "Batch", "wrap-mismatch", good.encoded)
    case("asked for two of its three documents", "Batch", "wrap-mismatch", good.encoded, docs=docs[:1])
    case(
        "asked for its documents with another one first",
        "Batch",
        "wrap-mismatch",
        good.encoded,
        doc=docs[0],
        docs=(DOC_ID, *docs[1:]),
    )
    moved = sign_record(
        KeyWrap(**{**_fields(good.record), "docs": tuple(sorted((docs[0], fourth)))}), PATIENT
    )
    case(
        "outer docs changed and re-signed: moved to another set of documents",
        "Batch",
        "wrap-mismatch",
        moved.encoded,
        docs=tuple(sorted((docs[0], fourth))),
    )
    alone = sign_record(KeyWrap(**{**_fields(good.record), "docs": None}), PATIENT)
    case(
        "outer docs removed and re-signed: one document's wrap sealing three keys",
        "Batch",
        "wrap-mismatch",
        alone.encoded,
    )
    case(
        "sealed keys empty: no key for the ids of docs",
        "Batch",
        "wrap-mismatch",
        resealed(secret(keys=[]), docs=docs),
        docs=docs,
    )
    repeated = _fields(good.record) | {"docs": tuple(sorted((DOC_ID, THIRD_DOC_ID)))}
    payload = KeyWrap(**{**repeated, "docs": None}).to_wire() | {"docs": list(repeated["docs"])}
    head = {1: -8, 4: PATIENT.did.encode(), 16: RecordType.KEY_WRAP.value}
    case(
        "docs repeats doc, signed",
        "Batch",
        "invalid-record",
        forge(head, payload, PATIENT),
        docs=tuple(d for d in repeated["docs"] if d != DOC_ID),
    )
    deposit_secret = WrapSecret(
        key=key,
        doc=DOC_ID,
        recipient=PATIENT.did,
        wrapper=LAB.did,
        purpose=DEPOSIT_PURPOSE,
        grant=GRANT_ID,
        docs=(OTHER_DOC_ID,),
        keys=(keys[0],),
    )
    several = Deposit(
        patient=PATIENT.did,
        doc=DOC_ID,
        size=4096,
        recipient_key=PATIENT_ENC.public_key,
        sealed=seal(
            cbor.encode(deposit_secret.to_wire()), PATIENT_ENC.public_key, fixed_seed("batch-deposit-e")
        ),
        grant=GRANT_ID,
        iat=NOW,
    )
    case(
        "a deposit whose sealed secret carries the key of a second document",
        "Batch",
        "wrap-mismatch",
        sign_record(several, LAB).encoded,
        kind="fedrecord/deposit",
        recipient=PATIENT.did,
        seed=patient_seed,
    )


def _fields(wrap: KeyWrap) -> dict[str, Any]:
    return {
        name: getattr(wrap, name)
        for name in ("recipient", "doc", "docs", "purpose", "grant", "recipient_key", "sealed", "iat")
    }


DOC_NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A document whose header and content verify."},
    "Header": {
        "bugType": "KEY_COMMITMENT",
        "description": "A signed header that does not fit the stream ([DOC-3], [DOC-4]).",
    },
}


def build_documents() -> VectorFile:
    file = VectorFile(
        algorithm="fedrecord-documents",
        header=[
            "Documents (spec section 8.3): the plaintext of the stream is a 4-byte big-endian length, the",
            "author's signed document header, then the content. Decrypt `ciphertext` with `key`; valid",
            "cases give `header` (diagnostic notation of the signed header), `author` and `content`;",
            "invalid ones are refused with `error`.",
        ],
        notes=DOC_NOTES,
    )
    tests = file.group("DocumentDecrypt", "documents with their signed headers")
    key, prefix = fixed_seed("doc-key"), fixed_seed("doc-prefix")[:16]
    content = b"Complete blood count\nHemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\n"

    def header(**changes: Any) -> DocumentHeader:
        fields: dict[str, Any] = dict(
            patient=PATIENT.did,
            title="Complete blood count",
            doc_type="58410-2",
            category="lab",
            labels=("lab",),
            date=NOW,
            media_type="text/plain",
            size=len(content),
            commitment=key_commitment(key, prefix),
        )
        fields.update(changes)
        return DocumentHeader(**fields)

    def encrypted(document_header: DocumentHeader, body: bytes = content, author: Any = LAB) -> bytes:
        writer = DocumentWriter(author, document_header, key=key, prefix=prefix)
        return b"".join(writer.encrypt([body]))

    good_header = header()
    writer = DocumentWriter(LAB, good_header, key=key, prefix=prefix)
    ciphertext = b"".join(writer.encrypt([content]))
    file.case(
        tests,
        "a lab result",
        result="valid",
        flags=["Valid"],
        key=key.hex(),
        ciphertext=ciphertext.hex(),
        author=LAB.did,
        patient=PATIENT.did,
        content=content.hex(),
        documentId=writer.document_id.hex(),
        header=diag_bytes(writer.signed_header.encoded),
    )
    file.case(
        tests,
        "an empty document with labels",
        result="valid",
        flags=["Valid"],
        key=key.hex(),
        ciphertext=encrypted(header(size=0, labels=("HIV", "lab")), b"").hex(),
        author=LAB.did,
        patient=PATIENT.did,
        content="",
    )
    # A header committing to another key, encrypted by hand under this one.
    from fedrecord.core.stream import StreamEncryptor

    def raw(plaintext: bytes) -> bytes:
        return b"".join(StreamEncryptor(key, prefix).encrypt([plaintext]))

    def invalid(comment: str, error: str, ciphertext: bytes) -> None:
        file.case(
            tests,
            comment,
            result="invalid",
            flags=["Header"],
            error=error,
            key=key.hex(),
            ciphertext=ciphertext.hex(),
            author=LAB.did,
            patient=PATIENT.did,
        )

    def framed(signed_header: bytes | bytearray, body: bytes, length: int | None = None) -> bytes:
        """The stream of a hand-made plaintext: length prefix, header bytes, content."""
        size = len(signed_header) if length is None else length
        return raw(size.to_bytes(4, "big") + bytes(signed_header) + body)

    foreign = sign_record(header(commitment=key_commitment(fixed_seed("other"), prefix)), LAB).encoded
    invalid("header commits to another key", "bad-commitment", framed(foreign, content))
    signed = sign_record(good_header, LAB).encoded
    invalid("content shorter than the header says", "invalid-record", framed(signed, content[:-1]))
    invalid(
        "header by another author than expected", "invalid-record", encrypted(good_header, author=MALLORY)
    )
    invalid("header about another patient", "invalid-record", encrypted(header(patient=GP.did)))
    altered = bytearray(signed)
    altered[-1] ^= 1
    invalid("header signature altered", "bad-signature", framed(altered, content))
    invalid("header length beyond the cap", "too-large", framed(signed, content, length=1 << 20))
    invalid("stream ends inside the header", "truncated", framed(signed[:10], b"", length=len(signed)))
    return file
