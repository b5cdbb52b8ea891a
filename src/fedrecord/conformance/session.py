"""One run of the suite against one target: the patient's key, the actors, and the steps every case reuses.

The steps here (connect, deposit, accept, grant, list, fetch) are the
protocol's happy paths, built from the spec: a case calls them to reach the
state it wants to attack, then sends its own hostile request through
:class:`~fedrecord.conformance.wire.Wire`.  A step the target refuses fails
the case with ``set-up:`` in front of the reason.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedrecord.core import (
    Grant,
    KeyWrap,
    NodeProfile,
    PrivateRestriction,
    Signed,
    SigningIdentity,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.documents import DocumentReader
from fedrecord.core.errors import HTTP_STATUS, Code, FedrecordError
from fedrecord.core.key_wraps import unwrap_key

from .actors import Actor, Patient, SealedDocument, now, pieces, seal_document
from .registry import Failed, Skipped
from .wire import Answer, Wire, b64, unb64


@dataclass
class World:
    """What most cases read: a lab connected, and three of its documents accepted into the record."""

    lab: Actor
    deposit_grant: Signed[Grant]
    lab_result: SealedDocument
    psy_note: SealedDocument
    imaging: SealedDocument

    @property
    def documents(self) -> list[SealedDocument]:
        return [self.lab_result, self.psy_note, self.imaging]


@dataclass
class Session:
    """The target, the patient's key and the shared steps."""

    wire: Wire
    patient: Patient
    peer: Wire | None = None
    declared_skips: frozenset[str] = frozenset()
    #: The clinic's signing key, when the suite knows its seed: it drives the clinic through its control endpoint.
    peer_identity: SigningIdentity | None = None
    _world: World | None = field(default=None, init=False)
    _known: dict[str, bytes] = field(default_factory=dict, init=False)  # did -> its deposit grant's id

    @classmethod
    async def open(
        cls,
        target: str,
        seed: bytes,
        *,
        peer: str | None = None,
        peer_seed: bytes | None = None,
        skips: Sequence[str] = (),
    ) -> Session:
        """Read the target's profile and check that its key is the one the seed makes (spec/conformance.md).

        Raises:
            Failed: the target does not answer, or is not the seed's patient node.
        """
        wire = Wire(target)
        identity = SigningIdentity.from_seed(seed)
        answer = await wire.get("/v0/profile")
        if answer.status != 200:
            raise Failed(f"GET /v0/profile answered {answer.describe()}")
        try:
            profile = open_record(answer.body, NodeProfile)
        except FedrecordError as exc:
            raise Failed(f"the profile does not open as a node profile: {exc.code.value}") from None
        if profile.signer != identity.did:
            raise Failed(
                f"the target is {profile.signer}, not the patient node of the seed ({identity.did}): "
                "start it with the suite's seed (spec/conformance.md)"
            )
        return cls(
            wire,
            Patient(identity, profile),
            Wire(peer) if peer else None,
            frozenset(skips),
            SigningIdentity.from_seed(peer_seed) if peer and peer_seed else None,
        )

    async def close(self) -> None:
        await self.wire.close()
        if self.peer is not None:
            await self.peer.close()

    # --- the patient's own actions, through the control endpoint --------------------------------------

    async def manage(self, op: str, **args: Any) -> dict[str, Any]:
        """Act as the patient through ``POST /v0/manage`` ([API-50]); a refusal fails the case's set-up."""
        answer = await self.wire.call("/v0/manage", self.patient.identity, {"op": op, **args})
        if answer.status != 200:
            raise Failed(f"set-up: manage {op} answered {answer.describe()}")
        return answer.data

    async def invitation(self) -> dict[str, Any]:
        """A fresh invitation's payload (Section 15.4), decoded from the code the target made."""
        code = str((await self.manage("invite", label="conformance"))["code"])
        if not code.startswith("fr0-"):
            raise Failed(f"set-up: the invitation code {code[:16]!r}... does not start with fr0-")
        payload = cbor.decode(base64.urlsafe_b64decode(code[4:] + "=" * (-len(code[4:]) % 4)))
        if type(payload) is not dict or type(payload.get("token")) is not bytes:
            raise Failed("set-up: the invitation payload is not a map with a token")
        return payload

    async def keep(self, *records: Signed[Any]) -> None:
        """Give the target grants and private restrictions the suite signed as the patient."""
        await self.manage("keep", records=[r.encoded for r in records])

    async def accept(self, doc: bytes, labels: Sequence[str] = ()) -> None:
        await self.manage("accept", doc=doc, labels=list(labels))

    def restriction(
        self, *, labels: Sequence[str] = (), grant: bytes | None = None, node: str | None = None
    ) -> Signed[PrivateRestriction]:
        """A private restriction signed as the patient, hiding ``labels`` from a grant or a node (6.9)."""
        record = PrivateRestriction(
            grants=(grant,) if grant is not None else None,
            audiences=(node,) if node is not None else None,
            labels=tuple(labels) or None,
            iat=now(),
        )
        return sign_record(record, self.patient.identity)

    # --- a clinic's steps -------------------------------------------------------------------------

    async def connect(self, actor: Actor) -> Signed[Grant]:
        """Connect ``actor`` with a fresh invitation; return the deposit grant (15.4)."""
        invitation = await self.invitation()
        answer = await self.wire.call(
            "/v0/connect", actor.identity, {"token": invitation["token"], "profile": actor.profile.encoded}
        )
        if answer.status != 201:
            raise Failed(f"set-up: connect answered {answer.describe()}")
        grant = open_record(answer.data["grant"], Grant)
        self._known.setdefault(actor.did, grant.id)
        return grant

    def seal(
        self, author: Actor, grant: Signed[Grant], content: bytes, *, title: str, **header: Any
    ) -> SealedDocument:
        return seal_document(
            author, self.patient.did, self.patient.encryption_key(), grant.id, content, title=title, **header
        )

    async def put(
        self,
        author: Actor,
        sealed: SealedDocument,
        *,
        stream: bytes | None = None,
        deposit: bytes | None = None,
        signer: SigningIdentity | None = None,
    ) -> Answer:
        """``PUT /v0/documents/{doc}`` (15.5): the deposit record in its field and the stream as the body."""
        path = f"/v0/documents/{sealed.hex}"
        data = sealed.ciphertext if stream is None else stream
        headers = self.wire.signed_headers(
            signer or author.identity,
            "PUT",
            path,
            None,
            headers={
                "Content-Type": "application/octet-stream",
                "Fedrecord-Streamed": "1",
                "Fedrecord-Deposit": b64(sealed.deposit.encoded if deposit is None else deposit),
            },
            streamed=True,
        )
        return await self.wire.request("PUT", path, data=_chunks(data), headers=headers)

    async def deposit(
        self, author: Actor, grant: Signed[Grant], content: bytes, *, title: str, **header: Any
    ) -> SealedDocument:
        """Encrypt and deposit a document; it lands in the patient's inbox."""
        sealed = self.seal(author, grant, content, title=title, **header)
        answer = await self.put(author, sealed)
        if answer.status != 201:
            raise Failed(f"set-up: the deposit answered {answer.describe()}")
        return sealed

    async def accepted(
        self,
        author: Actor,
        grant: Signed[Grant],
        content: bytes,
        *,
        title: str,
        accept_labels: Sequence[str] = (),
        **header: Any,
    ) -> SealedDocument:
        """Deposit a document and accept it into the record as the patient."""
        sealed = await self.deposit(author, grant, content, title=title, **header)
        await self.accept(sealed.doc, accept_labels)
        return sealed

    async def world(self) -> World:
        """The shared documents, made once per run; cases must not delete them or change their labels."""
        if self._world is None:
            lab = Actor.create("Conformance lab")
            grant = await self.connect(lab)
            lab_result = await self.accepted(
                lab, grant, b"potassium 4.1 mmol/L", title="Potassium", category="lab"
            )
            psy_note = await self.accepted(
                lab,
                grant,
                b"psychiatric assessment",
                title="Assessment",
                category="note",
                doc_type="report",
                labels=["PSY"],
            )
            imaging = await self.accepted(
                lab, grant, b"chest x-ray: clear", title="Chest X-ray", category="imaging", doc_type="report"
            )
            self._world = World(lab, grant, lab_result, psy_note, imaging)
        return self._world

    async def reader(self, name: str = "Conformance GP", **terms: Any) -> tuple[Actor, Signed[Grant]]:
        """A new actor holding a patient grant (``read`` on the whole record unless ``terms`` say otherwise)."""
        actor = Actor.create(name)
        return actor, self.patient.grant(actor.did, **terms)

    # --- reading ---------------------------------------------------------------------------------

    async def listing(self, actor: Actor, chain: Sequence[Signed[Grant]]) -> Answer:
        return await self.wire.call("/v0/list", actor.identity, {"chain": [g.encoded for g in chain]})

    async def listed(self, actor: Actor, chain: Sequence[Signed[Grant]]) -> set[bytes]:
        """The ids a listing names; a refusal fails the case."""
        answer = await self.listing(actor, chain)
        if answer.status != 200:
            raise Failed(f"the listing answered {answer.describe()}")
        return {entry["doc"] for entry in answer.data["documents"]}

    async def fetch(
        self,
        actor: Actor,
        chain: Sequence[Signed[Grant]],
        doc: bytes,
        *,
        receipt: bytes | None = None,
        profile: bytes | bool | None = True,
        signer: SigningIdentity | None = None,
        extra: dict[str, str] | None = None,
    ) -> Answer:
        """``POST /v0/fetch`` (15.9) with a fresh receipt unless ``receipt`` is given."""
        fields: dict[str, Any] = {
            "chain": [g.encoded for g in chain],
            "receipt": receipt
            if receipt is not None
            else actor.receipt(self.patient.did, doc, chain[-1]).encoded,
        }
        if profile is True:
            fields["profile"] = actor.profile.encoded
        elif isinstance(profile, bytes):
            fields["profile"] = profile
        return await self.wire.call("/v0/fetch", signer or actor.identity, fields, extra=extra)

    def open_fetched(self, actor: Actor, answer: Answer, doc: bytes) -> bytes:
        """The content of a fetch answer, checked as a requester must ([API-24]).

        Raises:
            Failed: the answer is not a document the actor can read.
        """
        if answer.status != 200:
            raise Failed(f"the fetch answered {answer.describe()}")
        try:
            wrap = open_record(unb64(answer.headers["Fedrecord-Key-Wrap"]), KeyWrap)
        except (KeyError, ValueError, FedrecordError) as exc:
            raise Failed(f"the fetch answer carries no valid key wrap ({exc})") from None
        if wrap.signer != self.patient.did:
            raise Failed("the key wrap is not signed by the patient")
        try:
            key = unwrap_key(wrap, recipient=actor.did, keys=actor.keys, doc=doc).key
            reader = DocumentReader(key, expected_patient=self.patient.did)
            content = b"".join(reader.decrypt(pieces(answer.body)))
        except FedrecordError as exc:
            raise Failed(f"the fetched document does not open: {exc.code.value}") from None
        if reader.document_id != doc:
            raise Failed("the fetched stream is not the document asked for")
        return content

    async def make_known(self, *actors: Actor) -> None:
        """Connect each actor with an invitation, once: the target answers state to nodes it knows ([API-16])."""
        for actor in actors:
            if actor.did not in self._known:
                await self.connect(actor)

    def known_grant(self, actor: Actor) -> bytes | None:
        """The id of the deposit grant the suite's own connect of ``actor`` received, if it connected it."""
        return self._known.get(actor.did)

    async def grants_for(self, actor: Actor) -> list[bytes]:
        """The grants of ``actor``'s state answer, less the deposit grant of the suite's own connect of it."""
        grants = (await self.state(actor))["grants"]
        own = self.known_grant(actor)
        return [g for g in grants if own is None or open_record(g, Grant).id != own]

    async def state(self, actor: Actor) -> dict[str, Any]:
        """The state answer to ``actor``, connected first if the target does not know it yet."""
        await self.make_known(actor)
        answer = await self.wire.call("/v0/state", actor.identity, {})
        if answer.status != 200:
            raise Failed(f"the state request answered {answer.describe()}")
        return answer.data

    def require_peer(self) -> Wire:
        if self.peer is None:
            raise Skipped("needs a second node (--peer URL)")
        return self.peer

    async def clinic_manage(self, op: str, **args: Any) -> Answer:
        """``POST /v0/manage`` on the clinic under test (15.20), signed with the clinic's own key.

        Returns the answer as it came (a refusal is not a set-up failure here:
        the clinic cases read the codes the clinic answers with).

        Raises:
            Skipped: no peer, or the suite does not know the clinic's seed.
        """
        peer = self.require_peer()
        identity = getattr(self, "peer_identity", None)
        if identity is None:
            raise Skipped("needs the clinic's seed (--launch-peer, or --peer with --peer-seed)")
        return await peer.call("/v0/manage", identity, {"op": op, **args})


async def _chunks(data: bytes):  # type: ignore[no-untyped-def]
    for piece in pieces(data):
        yield piece


def expect_refusal(answer: Answer, code: str, status: int | None = None, *, what: str = "") -> None:
    """Fail unless ``answer`` is an error body with ``code`` (and ``status`` when given, else the code's status)."""
    # The table of Section 10, as the core holds it (tests/test_requirement_ids.py keeps them equal).
    expected_status = status if status is not None else HTTP_STATUS.get(Code(code), 400)
    prefix = f"{what}: " if what else ""
    if answer.code != code or answer.status != expected_status:
        raise Failed(f"{prefix}expected HTTP {expected_status} {code}, got {answer.describe()}")
    keys = sorted(cbor.decode(answer.body, max_size=1 << 20))
    if keys != ["code", "message"]:
        raise Failed(f"{prefix}an error body holds exactly code and message ([ERR-2]), this one {keys}")


def expect_status(answer: Answer, status: int, *, what: str = "") -> None:
    if answer.status != status:
        prefix = f"{what}: " if what else ""
        raise Failed(f"{prefix}expected HTTP {status}, got {answer.describe()}")
