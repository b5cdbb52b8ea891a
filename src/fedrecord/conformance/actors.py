"""The nodes the suite plays: clinics, devices and a malicious peer, each with keys of its own.

An actor is a signing identity, an encryption key pair and a signed node
profile.  It does not listen: the target may try to reach it (a deposit
decision, an outbox retry) and finds nothing, which the protocol allows
([API-5]: the sender retries later).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fedrecord.core import (
    AccessReceipt,
    DocumentHeader,
    EncryptionKey,
    EncryptionKeyPair,
    Grant,
    NodeProfile,
    Scope,
    Signed,
    SigningIdentity,
    sign_record,
)
from fedrecord.core.documents import DocumentWriter
from fedrecord.core.key_wraps import make_deposit
from fedrecord.core.records import Deposit
from fedrecord.core.stream import key_commitment

DAY = 86_400
#: Where the suite's actors claim to listen: a loopback port nothing serves (the discard port).
NOWHERE = "http://127.0.0.1:9"


def now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Actor:
    """A node the suite plays."""

    name: str
    identity: SigningIdentity
    keys: EncryptionKeyPair
    profile: Signed[NodeProfile]

    @classmethod
    def create(
        cls, name: str, *, role: str = "clinic", patient: str | None = None, seed: bytes | None = None
    ) -> Actor:
        """A node with fresh keys (its signing key from ``seed`` when given) and a profile it signed."""
        identity = SigningIdentity.from_seed(seed if seed is not None else os.urandom(32))
        keys = EncryptionKeyPair.from_seed(os.urandom(32))
        t = now()
        profile = NodeProfile(
            name=name,
            role=role,
            endpoints=(NOWHERE,),
            enc_keys=(EncryptionKey(key=keys.public_key, nbf=t - DAY, exp=t + 365 * DAY),),
            versions=(0,),
            seq=1,
            iat=t,
            patient=patient,
        )
        return cls(name, identity, keys, sign_record(profile, identity))

    @property
    def did(self) -> str:
        return self.identity.did

    def profile_with(self, **changes: Any) -> bytes:
        """This actor's profile with ``changes`` (``endpoints``, ...), signed again by it."""
        return sign_record(dataclasses.replace(self.profile.record, **changes), self.identity).encoded

    def grant(self, audience: str, **terms: Any) -> Signed[Grant]:
        """A grant signed by this actor (a delegation when ``parent`` is given); see :func:`signed_grant`."""
        return signed_grant(self.identity, audience, **terms)

    def receipt(
        self,
        patient: str,
        doc: bytes,
        grant: Signed[Grant],
        *,
        purpose: str | None = None,
        docs: Sequence[bytes] = (),
    ) -> Signed[AccessReceipt]:
        """An access receipt for reading ``doc`` under ``grant`` ([API-22]).

        ``docs`` names further documents (a batch, 15.21): written as a set, in ascending order.
        """
        record = AccessReceipt(
            patient=patient,
            doc=doc,
            docs=tuple(sorted(docs)) or None,
            grant=grant.id,
            action="read",
            purpose=purpose or grant.record.purpose,
            iat=now(),
            nonce=os.urandom(16),
        )
        return sign_record(record, self.identity)


def signed_grant(
    issuer: SigningIdentity,
    audience: str,
    *,
    scope: Scope | None = None,
    actions: Sequence[str] = ("read",),
    purpose: str = "treatment",
    nbf: int | None = None,
    exp: int | None = None,
    iat: int | None = None,
    parent: bytes | None = None,
) -> Signed[Grant]:
    """A grant by ``issuer``: by default ``read`` on the whole record for 30 days, valid from 5 s ago."""
    t = now()
    record = Grant(
        audience=audience,
        scope=scope or Scope(past=True, future=True),
        actions=tuple(actions),
        purpose=purpose,
        iat=t - 5 if iat is None else iat,
        nbf=t - 5 if nbf is None else nbf,
        exp=t + 30 * DAY if exp is None else exp,
        parent=parent,
        nonce=os.urandom(16),
    )
    return sign_record(record, issuer)


@dataclass(frozen=True)
class Patient:
    """The patient as the suite holds it: the signing key made from the seed the target was started with.

    The suite does not know the patient's encryption keys (the target draws
    them); it reads the public one from the target's signed profile.
    """

    identity: SigningIdentity
    profile: Signed[NodeProfile]

    @property
    def did(self) -> str:
        return self.identity.did

    def grant(self, audience: str, **terms: Any) -> Signed[Grant]:
        """A grant signed with the patient's key: a chain root ([CAP-2])."""
        return signed_grant(self.identity, audience, **terms)

    def encryption_key(self) -> bytes:
        """The patient's current encryption key, from the target's own signed profile."""
        key = self.profile.record.encryption_key_at(now())
        assert key is not None, "the target's profile has no current encryption key"
        return key.key


@dataclass(frozen=True)
class SealedDocument:
    """A document an actor encrypted for the patient, and its deposit."""

    doc: bytes
    key: bytes
    content: bytes
    ciphertext: bytes
    header: DocumentHeader
    deposit: Signed[Deposit]

    @property
    def hex(self) -> str:
        return self.doc.hex()


def seal_document(
    author: Actor,
    patient: str,
    patient_key: bytes,
    deposit_grant: bytes,
    content: bytes,
    *,
    title: str,
    category: str = "lab",
    labels: Sequence[str] = (),
    doc_type: str = "lab-result",
    size: int | None = None,
) -> SealedDocument:
    """Encrypt ``content`` for ``patient`` as ``author`` and make its deposit record (Sections 8, 9.4).

    ``size`` overrides the size the deposit announces (for cases that lie about it).
    """
    key, prefix = os.urandom(32), os.urandom(16)
    header = DocumentHeader(
        patient=patient,
        title=title,
        doc_type=doc_type,
        category=category,
        labels=tuple(labels),
        date=now(),
        media_type="text/plain",
        size=len(content),
        commitment=key_commitment(key, prefix),
    )
    writer = DocumentWriter(author.identity, header, key=key, prefix=prefix)
    ciphertext = b"".join(writer.encrypt([content]))
    doc = writer.document_id
    deposit = make_deposit(
        depositor=author.identity,
        patient=patient,
        patient_key=patient_key,
        doc=doc,
        size=len(ciphertext) if size is None else size,
        key=key,
        grant=deposit_grant,
        iat=now(),
        ephemeral_seed=os.urandom(32),
    )
    return SealedDocument(doc, key, content, ciphertext, header, deposit)


def pieces(data: bytes, size: int = 1 << 16) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
