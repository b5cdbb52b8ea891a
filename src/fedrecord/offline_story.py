"""The offline walk-through behind ``fedrecord demo``: the main story on the protocol core alone.

A lab encrypts a result for a patient and deposits it; the patient accepts it
and grants a GP; the GP decrypts it; the patient revokes; the GP's grant is
refused.  No network and no storage: each party is a set of keys, and every
message is the exact bytes a node would send.  This module is an adapter, so
it draws the randomness and reads the clock that the core takes as arguments.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from fedrecord.core import (
    AcceptedEntry,
    AccessReceipt,
    Action,
    Code,
    Deposit,
    DepositDecision,
    DocumentFacts,
    DocumentHeader,
    EncryptionKey,
    EncryptionKeyPair,
    Grant,
    KeyWrap,
    NodeProfile,
    PrivateRestriction,
    Revocation,
    RevocationSet,
    Scope,
    SigningIdentity,
    StateHead,
    decide,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentReader, DocumentWriter, padded_size
from fedrecord.core.key_wraps import make_deposit, open_deposit_key, unwrap_key, wrap_key
from fedrecord.core.stream import key_commitment

DAY = 86_400
RESULT = b"Complete blood count\nHemoglobin 14.1 g/dL\nLeukocytes 6.2 G/L\nPlatelets 250 G/L\n"


@dataclass
class Party:
    """One node of the story: its signing identity, encryption keys and signed profile."""

    name: str
    role: str
    identity: SigningIdentity
    keys: EncryptionKeyPair
    profile: bytes

    @classmethod
    def create(cls, name: str, role: str, now: int) -> Party:
        identity = SigningIdentity.from_seed(os.urandom(32))
        keys = EncryptionKeyPair.from_seed(os.urandom(32))
        profile = NodeProfile(
            name=name,
            role=role,
            endpoints=(f"https://{role}.invalid/fedrecord",),
            enc_keys=(EncryptionKey(key=keys.public_key, nbf=now, exp=now + 365 * DAY),),
            versions=(0,),
            seq=0,
            iat=now,
        )
        return cls(name, role, identity, keys, sign_record(profile, identity).encoded)


class StoryFailed(Exception):
    """A step did not behave as the protocol says it must."""


def play(say: Callable[[str], None] = print, now: int | None = None) -> None:
    """Play the story, narrating each step.

    Raises:
        StoryFailed: when any step does not behave as expected.
    """
    now = int(time.time()) if now is None else now

    def expect(condition: bool, what: str) -> None:
        if not condition:
            raise StoryFailed(what)

    say("1. Three nodes are created, each with a did:key identity and a signed profile (US-1).")
    patient = Party.create("Camille (patient)", "patient", now)
    lab = Party.create("Laboratoire Pasteur", "clinic", now)
    gp = Party.create("Cabinet du Dr Martin", "clinic", now)
    for party in (patient, lab, gp):
        profile = open_record(party.profile, NodeProfile)
        expect(profile.signer == party.identity.did, "a profile verifies under its own identity")
        say(f"   {party.name:22} {party.identity.did[:32]}...  profile {len(party.profile)} bytes")

    say("2. The patient connects the lab: a deposit-only grant, it can write to the inbox, not read (US-2).")
    deposit_grant = sign_record(
        Grant(
            audience=lab.identity.did,
            scope=Scope(),
            actions=("deposit",),
            purpose="treatment",
            iat=now,
            nbf=now,
            exp=now + 365 * DAY,
            nonce=os.urandom(16),
        ),
        patient.identity,
    )

    say("3. The lab encrypts a result for the patient and deposits it (US-3).")
    key, prefix = os.urandom(32), os.urandom(16)
    header = DocumentHeader(
        patient=patient.identity.did,
        title="Complete blood count",
        doc_type="58410-2",
        category="lab",
        labels=("lab",),
        date=now - DAY,
        media_type="text/plain",
        size=len(RESULT),
        commitment=key_commitment(key, prefix),
    )
    writer = DocumentWriter(lab.identity, header, key=key, prefix=prefix)
    ciphertext = b"".join(writer.encrypt([RESULT]))
    deposit = make_deposit(
        depositor=lab.identity,
        patient=patient.identity.did,
        patient_key=patient.keys.public_key,
        doc=writer.document_id,
        size=len(ciphertext),
        key=key,
        grant=deposit_grant.id,
        iat=now,
        ephemeral_seed=os.urandom(32),
    )
    expect(RESULT not in ciphertext and b"blood" not in deposit.encoded, "nothing readable travels")
    say(
        f"   ciphertext {len(ciphertext)} bytes, document id {writer.document_id.hex()[:16]}..., "
        f"deposit record {len(deposit.encoded)} bytes: no title, no label in clear"
    )

    say("4. The patient's node checks the deposit, opens it, and the patient accepts it.")
    received = open_record(deposit.encoded, Deposit)
    allowed = decide(
        [deposit_grant],
        patient=patient.identity.did,
        requester=received.signer,
        action=Action.DEPOSIT,
        now=now,
    )
    expect(allowed.allowed, "the lab may deposit")
    document_key = open_deposit_key(received, patient=patient.identity.did, keys=patient.keys).key
    reader = DocumentReader(document_key, expected_patient=patient.identity.did)
    content = b"".join(reader.decrypt([ciphertext]))
    assert reader.header is not None
    expect(
        content == RESULT and reader.header.signer == lab.identity.did, "the patient reads the lab's result"
    )
    shown = reader.header.record
    say(f'   inbox: "{shown.title}" from {lab.name}, labels {list(shown.labels)}')
    decision = sign_record(
        DepositDecision(deposit=received.id, doc=writer.document_id, decision="accepted", iat=now),
        patient.identity,
    )
    entry = sign_record(
        AcceptedEntry(
            doc=writer.document_id,
            padded_size=padded_size(len(ciphertext)),
            month=int(time.strftime("%Y%m", time.gmtime(now))),
        ),
        patient.identity,
    )
    say(f"   accepted: decision {decision.id.hex()[:16]}..., opaque record entry {entry.id.hex()[:16]}...")
    facts = DocumentFacts(
        id=writer.document_id, category="lab", labels=frozenset({"lab"}), date=now - DAY, added=now
    )

    say("5. The patient grants the GP: lab results, last 12 months and future ones, 90 days, treatment;")
    say("   privately, mental health (PSY) and sexual health (SEX) stay hidden from this grant (US-4, US-6).")
    gp_grant = sign_record(
        Grant(
            audience=gp.identity.did,
            scope=Scope(categories=("lab",), since=now - 365 * DAY, past=True, future=True),
            actions=("read",),
            purpose="treatment",
            iat=now,
            nbf=now,
            exp=now + 90 * DAY,
            nonce=os.urandom(16),
        ),
        patient.identity,
    )
    restriction = sign_record(
        PrivateRestriction(grants=(gp_grant.id,), labels=("PSY", "SEX"), iat=now), patient.identity
    )
    expect(b"PSY" not in gp_grant.encoded, "the grant itself shows only what is shared")

    say("6. The GP asks for the result; its signed request is the access receipt (US-8).")
    revocations = RevocationSet()

    def gp_reads(at: int) -> bytes | Code:
        receipt = sign_record(
            AccessReceipt(
                patient=patient.identity.did,
                doc=writer.document_id,
                grant=gp_grant.id,
                action="read",
                purpose="treatment",
                iat=at,
                nonce=os.urandom(16),
            ),
            gp.identity,
        )
        request = open_record(receipt.encoded, AccessReceipt)
        verdict = decide(
            [gp_grant],
            patient=patient.identity.did,
            requester=request.signer,
            action=Action.READ,
            now=at,
            revocations=revocations,
            document=facts,
            restrictions=[restriction],
        )
        if not verdict.allowed:
            assert verdict.reason is not None
            return verdict.reason
        wrap = wrap_for_gp(at)
        unwrapped = unwrap_key(
            open_record(wrap, KeyWrap), recipient=gp.identity.did, keys=gp.keys, doc=writer.document_id
        )
        return b"".join(DocumentReader(unwrapped.key).decrypt([ciphertext]))

    def wrap_for_gp(at: int) -> bytes:
        return wrap_key(
            wrapper=patient.identity,
            recipient=gp.identity.did,
            recipient_key=gp.keys.public_key,
            doc=writer.document_id,
            key=document_key,
            purpose="treatment",
            grant=gp_grant.id,
            iat=at,
            ephemeral_seed=os.urandom(32),
        ).encoded

    first = gp_reads(now + 60)
    expect(first == RESULT, "the GP decrypts the result")
    say(f'   the GP decrypted {len(RESULT)} bytes: "{RESULT.splitlines()[1].decode()}"')

    say("7. The patient revokes the grant and signs a new state head (US-5).")
    revocation = sign_record(
        Revocation(grant=gp_grant.id, iat=now + 120, reason="changed GP"), patient.identity
    )
    revocations.add(open_record(revocation.encoded, Revocation))
    head = sign_record(
        StateHead(
            seq=1,
            iat=now + 120,
            revocations=hashlib.sha256(gp_grant.id).digest(),
            revocation_count=1,
            prev=hashlib.sha256(b"head 0").digest(),
        ),
        patient.identity,
    )
    say(f"   revocation {revocation.id.hex()[:16]}..., state head seq {head.record.seq}")

    second = gp_reads(now + 180)
    expect(second == Code.REVOKED, "the revoked grant is refused")
    say(f"8. The GP asks again: refused with code {Code.REVOKED.value}.")
    say("The story behaved as the protocol requires.")
