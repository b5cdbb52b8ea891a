"""The cast and the sample records the vectors are made of, all from fixed seeds."""

from __future__ import annotations

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    AuditCheckpoint,
    DeletionAttestation,
    Deposit,
    DepositDecision,
    DocumentHeader,
    EncryptionKey,
    EncryptionKeyPair,
    Grant,
    KeyWrap,
    NodeProfile,
    PrivateRestriction,
    Record,
    Revocation,
    Scope,
    SigningIdentity,
    StateHead,
    Tombstone,
)
from fedrecord.core.stream import key_commitment

from .format import fixed_seed

NOW = 1_790_000_000  # the fixed "now" of every vector: 2026-09-21T13:33:20Z
DAY = 86_400

PATIENT = SigningIdentity.from_seed(fixed_seed("patient"))
GP = SigningIdentity.from_seed(fixed_seed("gp"))
LAB = SigningIdentity.from_seed(fixed_seed("lab"))
SPECIALIST = SigningIdentity.from_seed(fixed_seed("specialist"))
MALLORY = SigningIdentity.from_seed(fixed_seed("mallory"))

PATIENT_ENC = EncryptionKeyPair.from_seed(fixed_seed("patient-encryption"))
GP_ENC = EncryptionKeyPair.from_seed(fixed_seed("gp-encryption"))

DOC_KEY = fixed_seed("document-key")
DOC_PREFIX = fixed_seed("document-prefix")[:16]
DOC_ID = fixed_seed("document-id")
OTHER_DOC_ID = fixed_seed("other-document-id")
THIRD_DOC_ID = fixed_seed("third-document-id")
BATCH_DOC_IDS = tuple(sorted((OTHER_DOC_ID, THIRD_DOC_ID)))
"""The further documents of a batch (spec 15.21): the ``docs`` after ``doc`` = DOC_ID, a set."""
GRANT_ID = fixed_seed("grant-id")
NONCE = fixed_seed("nonce")[:16]


def sample_records() -> list[tuple[str, Record, SigningIdentity]]:
    """One valid record of every type, with its signer; the first of each type is its plainest.

    Receipts and key wraps come twice: for one document, then for a batch of three (``docs``,
    spec 15.21).
    """
    return [
        (
            "node profile of a clinic",
            NodeProfile(
                name="Cabinet du Dr Martin",
                role="clinic",
                endpoints=("https://gp.example/fedrecord",),
                enc_keys=(EncryptionKey(key=GP_ENC.public_key, nbf=NOW - DAY, exp=NOW + 365 * DAY),),
                versions=(0,),
                seq=1,
                iat=NOW - DAY,
            ),
            GP,
        ),
        (
            "deposit of a lab result",
            Deposit(
                patient=PATIENT.did,
                doc=DOC_ID,
                size=4096,
                recipient_key=PATIENT_ENC.public_key,
                sealed=bytes(48 + 200),
                grant=GRANT_ID,
                iat=NOW,
            ),
            LAB,
        ),
        ("accepted-document entry", AcceptedEntry(doc=DOC_ID, padded_size=4096, month=202609), PATIENT),
        (
            "document header",
            DocumentHeader(
                patient=PATIENT.did,
                title="Complete blood count",
                doc_type="58410-2",
                category="lab",
                labels=("lab",),
                date=NOW - DAY,
                media_type="text/plain",
                size=120,
                commitment=key_commitment(DOC_KEY, DOC_PREFIX),
                fhir=(("docStatus", "final"), ("status", "current")),
            ),
            LAB,
        ),
        (
            "key wrap to a GP",
            KeyWrap(
                recipient=GP.did,
                doc=DOC_ID,
                purpose="treatment",
                grant=GRANT_ID,
                recipient_key=GP_ENC.public_key,
                sealed=bytes(48 + 160),
                iat=NOW,
            ),
            PATIENT,
        ),
        (
            "key wrap to a GP of three documents",
            KeyWrap(
                recipient=GP.did,
                doc=DOC_ID,
                docs=BATCH_DOC_IDS,
                purpose="treatment",
                grant=GRANT_ID,
                recipient_key=GP_ENC.public_key,
                sealed=bytes(48 + 320),
                iat=NOW,
            ),
            PATIENT,
        ),
        (
            "grant: lab results of the last year and future ones, 90 days, treatment",
            Grant(
                audience=GP.did,
                scope=Scope(categories=("lab",), since=NOW - 365 * DAY, past=True, future=True),
                actions=("delegate", "read"),
                purpose="treatment",
                iat=NOW,
                nbf=NOW,
                exp=NOW + 90 * DAY,
                nonce=NONCE,
            ),
            PATIENT,
        ),
        (
            "private restriction: PSY and SEX hidden from one grant",
            PrivateRestriction(grants=(GRANT_ID,), labels=("PSY", "SEX"), iat=NOW),
            PATIENT,
        ),
        ("revocation", Revocation(grant=GRANT_ID, iat=NOW, reason="changed GP"), PATIENT),
        (
            "state head",
            StateHead(
                seq=7,
                iat=NOW,
                revocations=fixed_seed("revocation-digest"),
                revocation_count=1,
                prev=fixed_seed("previous-head"),
            ),
            PATIENT,
        ),
        (
            "state head signed before [API-18], with the legacy recs and nrecs",
            StateHead(
                seq=7,
                iat=NOW,
                revocations=fixed_seed("revocation-digest"),
                revocation_count=1,
                prev=fixed_seed("previous-head"),
                legacy_records=fixed_seed("record-digest"),
                legacy_record_count=12,
            ),
            PATIENT,
        ),
        ("tombstone", Tombstone(doc=DOC_ID, iat=NOW), PATIENT),
        ("audit checkpoint", AuditCheckpoint(seq=42, entry_hash=fixed_seed("audit-entry"), iat=NOW), PATIENT),
        (
            "deletion attestation: destroyed",
            DeletionAttestation(
                patient=PATIENT.did,
                doc=DOC_ID,
                tombstone=fixed_seed("tombstone-id"),
                outcome="destroyed",
                iat=NOW,
            ),
            GP,
        ),
        (
            "deletion attestation: retained by its author",
            DeletionAttestation(
                patient=PATIENT.did,
                doc=DOC_ID,
                tombstone=fixed_seed("tombstone-id"),
                outcome="retained",
                retain_until=NOW + 3650 * DAY,
                basis="medical record retention duty",
                iat=NOW,
            ),
            LAB,
        ),
        (
            "deposit decision: accepted",
            DepositDecision(deposit=fixed_seed("deposit-id"), doc=DOC_ID, decision="accepted", iat=NOW),
            PATIENT,
        ),
        (
            "access receipt",
            AccessReceipt(
                patient=PATIENT.did,
                doc=DOC_ID,
                grant=GRANT_ID,
                action="read",
                purpose="treatment",
                iat=NOW,
                nonce=NONCE,
            ),
            GP,
        ),
        (
            "access receipt of three documents",
            AccessReceipt(
                patient=PATIENT.did,
                doc=DOC_ID,
                docs=BATCH_DOC_IDS,
                grant=GRANT_ID,
                action="read",
                purpose="treatment",
                iat=NOW,
                nonce=fixed_seed("batch-nonce")[:16],
            ),
            GP,
        ),
    ]
