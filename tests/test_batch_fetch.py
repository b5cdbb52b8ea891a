"""Batch fetches between real nodes (spec section 15.21, [API-70] to [API-73], [WRAP-6]; the audit log, 15.10).

The demo's story runs in this process (tests/node_helpers.py): a patient node,
a GP and a lab on loopback sockets.  The lab deposits thirty more small lab
results, which the patient accepts; the GP's grant reaches them.

* A clinic that syncs the record for the first time brings the bodies with
  ``POST /v0/fetch-batch``: fewer audit entries than documents, each entry's
  receipt naming several documents, one ``audit_docs`` row per document read,
  and every copy held, its key wrapped at rest, and decrypting to its content.
  A document over 64 KiB is fetched on its own; a batch refused for anything
  but the chain is fetched again document by document, a chain refusal is not.
* Requests crafted by hand are refused with the code of [API-70]'s first
  failing step and leave the patient's tables and files as they were (the
  nonce of a verified request aside) -- above all, no audit entry: a bad
  signature, another patient, a broken, revoked or expired chain, one
  document the grant does not reach among others (``not-found``, byte for
  byte a single missing document's refusal), streams over ``BATCH_MAX_BYTES``,
  a replayed receipt, a receipt with ``docs`` at ``POST /v0/fetch``
  ([API-73]), receipts whose ``docs`` break the record's rules, mistyped
  fields and random garbage (never a 5xx).  A ``Range`` field is ignored.
* The clinic checks a batch answer as [API-72] says: a wrong stream count, a
  wrap signed by someone else, addressed to another reader or key, or naming
  other documents keeps nothing; a stream that fails keeps nothing of its
  document and the others are kept.  A lying patient's node cannot be made
  from ours: its answers are changed on the way in (the clinic's client is
  monkeypatched), as tests/test_sync_nodes.py does.
* The audit log with batch entries still verifies; listing it by document
  finds a batch entry under each of its documents; migration 5 fills
  ``audit_docs`` for entries written before it; a key the patient's node kept
  as a sealed box before keys_at_rest is still served.
* verify_audit finds an ``audit_docs`` row removed; ``fedrecord audit``
  names every document of a batch entry.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import fedrecord.node.patient as patient_module
from fedrecord.core import (
    BATCH_MAX_DOCS,
    AcceptedEntry,
    AccessReceipt,
    Code,
    DocumentHeader,
    Grant,
    KeyWrap,
    LocalProtocolError,
    RemoteProtocolError,
    Scope,
    Signed,
    SigningIdentity,
    cbor,
    open_record,
    sign_record,
)
from fedrecord.core.cose import sign1
from fedrecord.core.documents import DocumentReader, DocumentWriter
from fedrecord.core.key_wraps import unwrap_keys, wrap_keys
from fedrecord.core.records import WrapSecret
from fedrecord.core.sealed_box import seal
from fedrecord.core.signed import ALG_EDDSA, HEADER_ALG, HEADER_KID, HEADER_TYP
from fedrecord.core.stream import key_commitment
from fedrecord.node.keys_at_rest import unwrap_at_rest
from fedrecord.node.schema import MIGRATIONS
from fedrecord.node.store import AuditFilter
from fedrecord.node.sync import BATCH_LARGEST, _batches
from fedrecord.node.wire import BATCH_MAX_BYTES, decode_body
from fedrecord.storage.sqlite import open_database, transaction

from .conftest import encryption_keys
from .node_helpers import (
    DAY,
    RESULTS,
    Answer,
    Impostor,
    ServedNode,
    Story,
    assert_unchanged,
    body,
    build_story,
    cli_json,
    document_id_of,
    fetch_body,
    issue_grant,
    now,
    random_doc,
    refused,
    send,
    send_signed,
    snapshot,
    stored_stream,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

BATCH_PATH = "/v0/fetch-batch"
SMALL_RESULTS = 30


@dataclass
class Setting:
    story: Story
    contents: dict[bytes, bytes]
    """The thirty small lab results the lab deposited and the patient accepted, by id, in deposit order."""

    @property
    def small(self) -> list[bytes]:
        return list(self.contents)

    def content_of(self, doc: bytes) -> bytes:
        if doc == self.story.docs["cbc"]:
            return RESULTS["cbc"][3]
        return self.contents[doc]


async def deposit_and_accept(story: Story, contents: Sequence[bytes], *, title: str) -> list[bytes]:
    """The lab deposits each content as a lab result; the patient accepts them all."""
    docs = []
    for i, content in enumerate(contents):
        docs.append(
            await story.lab.clinic.deposit(
                story.patient.did,
                content,
                title=f"{title} {i}",
                category="lab",
                doc_type="lab-result",
                now=now(),
            )
        )
    sent, pending = await story.lab.clinic.flush_outbox()
    assert (sent, pending) == (len(docs), 0)
    for doc in docs:
        await story.patient.patient.accept(doc, now=now())
    return docs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setting(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setting]:
    story = await build_story(tmp_path_factory.mktemp("nodes"))
    try:
        # Small results of several sizes (about 20 bytes to 3 KiB), none labelled: the GP's grant reaches them.
        contents = [
            f"Glucose {i}: {5 + i / 10:.1f} mmol/L\n".encode() * (1 + 5 * i) for i in range(SMALL_RESULTS)
        ]
        docs = await deposit_and_accept(story, contents, title="Glucose")
        yield Setting(story, dict(zip(docs, contents, strict=True)))
    finally:
        await story.close()


# --- requests crafted by hand -------------------------------------------------------------------------------


def url(setting: Setting, path: str = BATCH_PATH) -> str:
    return setting.story.patient.url + path


def batch_receipt(
    identity: SigningIdentity, *, patient: str, docs: Sequence[bytes], grant: Signed[Grant], **changes: Any
) -> Signed[AccessReceipt]:
    """A receipt naming ``docs``: the first as ``doc``, the others (ascending) as ``docs``."""
    first, *others = docs
    record = AccessReceipt(
        patient=patient,
        doc=first,
        docs=tuple(sorted(others)) or None,
        grant=grant.id,
        action="read",
        purpose=grant.record.purpose,
        iat=now(),
        nonce=os.urandom(16),
    )
    if changes:
        record = dataclasses.replace(record, **changes)
    return sign_record(record, identity)


def forged_receipt(identity: SigningIdentity, wire: dict[str, Any]) -> bytes:
    """A receipt signed over any payload, so that it can break the record's rules (sign_record refuses to)."""
    protected = {
        HEADER_ALG: ALG_EDDSA,
        HEADER_KID: identity.did.encode(),
        HEADER_TYP: AccessReceipt.TYPE.value,
    }
    return sign1(identity, protected, cbor.encode(wire))


def batch_body(receipt: bytes, chain: Sequence[Signed[Grant]]) -> bytes:
    return body(chain=[link.encoded for link in chain], receipt=receipt)


async def fetch_batch_as(
    setting: Setting,
    docs: Sequence[bytes],
    *,
    identity: SigningIdentity | None = None,
    chain: Sequence[Signed[Grant]] | None = None,
    receipt: bytes | None = None,
    path: str = BATCH_PATH,
) -> Answer:
    """A batch fetch signed by ``identity`` (the GP), under ``chain`` (the GP's grant), with its own receipt."""
    story = setting.story
    identity = identity or story.gp.identity
    chain = chain or [story.gp_grant]
    if receipt is None:
        receipt = batch_receipt(identity, patient=story.patient.did, docs=docs, grant=chain[-1]).encoded
    return await send_signed(story.session, identity, "POST", url(setting, path), batch_body(receipt, chain))


async def fetch_one_as_gp(setting: Setting, doc: bytes) -> Answer:
    story = setting.story
    return await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        url(setting, "/v0/fetch"),
        fetch_body(story.gp.identity, story, doc, [story.gp_grant]),
    )


def answered(answer: Answer) -> dict[str, Any]:
    """The fields of a signed 200 answer, decoded under the 1 MiB cap of answers (a batch exceeds 64 KiB)."""
    assert answer.status == 200, (answer.status, answer.body[:200])
    assert answer.content_type == "application/cbor"
    assert "Signature" in answer.headers, "the answer to a verified request is signed ([HTTP-12])"
    return {key: value for key, value in decode_body(answer.body).items() if key != "v"}


async def connected_reader(
    setting: Setting, tmp_path: Path, *, name: str, label: str, docs: Iterable[bytes]
) -> ServedNode:
    """A new clinic, connected to the patient, holding a 30-day read grant scoped to ``docs`` by id (polled)."""
    patient = setting.story.patient
    reader = await ServedNode.create(tmp_path / "reader", role="clinic", name=name)
    try:
        invitation = await patient.patient.create_invitation(label=label, now=now())
        await reader.clinic.connect(invitation.url(), now=now())
        await patient.patient.grant(
            audience=reader.did,
            scope=Scope(ids=tuple(sorted(docs))),
            actions=("read",),
            purpose="treatment",
            days=30,
            now=now(),
        )
        await reader.clinic.poll(patient.did, now=now())
    except BaseException:
        await reader.stop()
        raise
    return reader


async def audit_count(node: ServedNode) -> int:
    rows = await node.h.db.execute_fetchall("SELECT count(*) FROM audit")
    return int(rows[0][0])


async def audit_docs_of(node: ServedNode, seq: int) -> list[bytes]:
    rows = await node.h.db.execute_fetchall("SELECT doc FROM audit_docs WHERE seq = ? ORDER BY doc", (seq,))
    return [row[0] for row in rows]


def opened_streams(setting: Setting, fields: dict[str, Any], asked: Sequence[bytes]) -> dict[bytes, bytes]:
    """The GP's reading of a batch answer: the wrap checked as [API-72] says, each stream decrypted."""
    story = setting.story
    wrap = open_record(fields["wrap"], KeyWrap)
    assert wrap.signer == story.patient.did
    documents = (asked[0], *sorted(asked[1:]))
    assert wrap.record.documents == documents
    assert wrap.record.recipient == story.gp.did
    keys = story.gp.h.keys_for(wrap.record.recipient_key)
    assert keys is not None
    found = unwrap_keys(wrap, recipient=story.gp.did, keys=keys, documents=documents)
    assert set(found) == set(documents)
    assert len(fields["streams"]) == len(documents)
    contents = {}
    for doc, stream in zip(documents, fields["streams"], strict=True):
        assert document_id_of(stream) == doc, "streams come in the receipt's order, doc then docs"
        reader = DocumentReader(found[doc], expected_patient=story.patient.did)
        contents[doc] = b"".join(reader.decrypt((stream,)))
    return contents


# --- the positive control: one receipt, one entry, one wrap ---------------------------------------------------


async def test_a_batch_is_one_receipt_one_audit_entry_and_one_key_wrap(setting: Setting) -> None:
    """Positive control for the refusals below: the crafted request works when nothing is wrong ([API-71])."""
    story = setting.story
    docs = [setting.small[3], story.docs["cbc"], *setting.small[:3]]
    before = await snapshot(story.patient)
    answer = await fetch_batch_as(setting, docs)
    fields = answered(answer)
    assert set(fields) == {"wrap", "streams"}
    contents = opened_streams(setting, fields, docs)
    assert contents == {doc: setting.content_of(doc) for doc in docs}
    after = await snapshot(story.patient)
    assert after.digest["audit"][0] == before.digest["audit"][0] + 1, "one entry for the whole receipt"
    assert after.digest["audit_docs"][0] == before.digest["audit_docs"][0] + len(docs)
    seq, _hash = await story.patient.h.store.audit_tail()  # type: ignore[misc]
    assert await audit_docs_of(story.patient, seq) == sorted(docs)
    (entry,) = [e for e in await story.patient.h.store.audit_entries() if e.seq == seq]
    assert (entry.reader, entry.doc) == (story.gp.did, docs[0]), "audit.doc keeps the receipt's doc"


async def test_a_receipt_without_docs_is_a_batch_of_one(setting: Setting) -> None:
    """15.21: a receipt naming one document is answered as a batch of one, whose key wrap has no ``docs``."""
    doc = setting.small[4]
    fields = answered(await fetch_batch_as(setting, [doc]))
    assert open_record(fields["wrap"], KeyWrap).record.docs is None
    assert opened_streams(setting, fields, [doc]) == {doc: setting.contents[doc]}


async def test_first_sync_fetches_the_bodies_in_batches(
    setting: Setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new clinic syncs a record of 31 small documents: few batch entries, every copy held and readable."""
    story, patient = setting.story, setting.story.patient
    wanted = {doc: setting.content_of(doc) for doc in [story.docs["cbc"], *setting.small]}
    # Scoped by id, so that documents other tests add do not change what this one expects.
    reader = await connected_reader(setting, tmp_path, name="Centre de santé", label="centre", docs=wanted)
    try:
        calls: Counter[str] = Counter()
        for name in ("fetch", "fetch_batch"):
            real = getattr(patient.patient, name)

            def counted(
                *args: Any, _real: Callable[..., Any] = real, _name: str = name, **kwargs: Any
            ) -> Any:
                calls[_name] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(patient.patient, name, counted)
        last = await audit_count(patient)
        report = await reader.clinic.sync(patient.did, now=now())
        monkeypatch.undo()
        assert report.documents_fetched == len(wanted) and not report.documents_failed, report
        assert calls["fetch"] == 0 and calls["fetch_batch"] >= 1, calls
        links = [link for link in await patient.h.store.audit_links() if link.seq > last]
        assert 0 < len(links) < len(wanted), "fewer audit entries than documents"
        assert len(links) == calls["fetch_batch"]
        read: Counter[bytes] = Counter()
        for link in links:
            receipt = open_record(link.receipt, AccessReceipt)
            assert receipt.signer == reader.did
            assert receipt.record.docs is not None, "each batch entry's receipt names several documents"
            covered = await audit_docs_of(patient, link.seq)
            assert covered == sorted(receipt.record.documents)
            read.update(covered)
        assert set(read) == set(wanted) and set(read.values()) == {1}, "one audit_docs row per document read"
        for doc, content in wanted.items():
            held = await reader.h.store.held_copy(doc)
            assert held is not None and held[2] == "shared"
            assert await reader.clinic.read_held(doc, now=now()) == content
            # Its key is kept wrapped at rest (keys_at_rest), and opens to the key that decrypts it.
            sealed_key = held[0]
            assert sealed_key is not None and len(sealed_key) == 73 and sealed_key[:1] == b"\x02"
            key = unwrap_at_rest(sealed_key, reader.h.encryption_keys, doc=doc)
            stream = await stored_stream(reader, doc)
            assert stream is not None and document_id_of(stream) == doc
            assert b"".join(DocumentReader(key, expected_patient=patient.did).decrypt((stream,))) == content
        assert not [p for p in (reader.h.files.root / "tmp").glob("*")], "no temporary file left"
        # Nothing is missing any more: the next sync fetches nothing and reads nothing.
        last = await audit_count(patient)
        again = await reader.clinic.sync(patient.did, now=now())
        assert again.documents_fetched == 0 and await audit_count(patient) == last
    finally:
        await reader.stop()


async def test_a_batch_refused_for_a_document_falls_back_to_single_fetches(
    setting: Setting, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch refused for anything but the chain is fetched again one document at a time (15.21);
    a chain refusal is not (the single fetches would be refused the same way)."""
    patient = setting.story.patient
    wanted = setting.small[10:15]
    reader = await connected_reader(setting, tmp_path, name="Maison de santé", label="maison", docs=wanted)
    try:
        refusal = Code.REVOKED

        async def refusing(*args: Any, **kwargs: Any) -> Any:
            raise RemoteProtocolError(refusal, "refused for the test")

        monkeypatch.setattr(patient.patient, "fetch_batch", refusing)
        last = await audit_count(patient)
        report = await reader.clinic.sync(patient.did, now=now())
        assert report.documents_fetched == 0
        assert sorted(report.documents_failed) == sorted(f"{doc.hex()}: revoked" for doc in wanted)
        assert await audit_count(patient) == last, "a chain refusal is not retried document by document"
        refusal = Code.TOO_LARGE
        report = await reader.clinic.sync(patient.did, now=now())
        assert report.documents_fetched == len(wanted) and not report.documents_failed, report
        links = [link for link in await patient.h.store.audit_links() if link.seq > last]
        assert len(links) == len(wanted)
        assert all(open_record(link.receipt, AccessReceipt).record.docs is None for link in links)
        for doc in wanted:
            assert await reader.clinic.read_held(doc, now=now()) == setting.contents[doc]
    finally:
        await reader.stop()


async def test_a_document_over_64_kib_is_fetched_on_its_own(setting: Setting, tmp_path: Path) -> None:
    """Sync batches documents of a padded size up to 64 KiB; a larger one is fetched alone (``POST /v0/fetch``)."""
    story, patient = setting.story, setting.story.patient
    content = os.urandom(100_000)
    (big,) = await deposit_and_accept(story, [content], title="Scan")
    wanted = {big: content, setting.small[15]: setting.contents[setting.small[15]]}
    wanted[setting.small[16]] = setting.contents[setting.small[16]]
    reader = await connected_reader(setting, tmp_path, name="Cabinet de radiologie", label="radiologie", docs=wanted)
    try:
        last = await audit_count(patient)
        report = await reader.clinic.sync(patient.did, now=now())
        assert report.documents_fetched == len(wanted) and not report.documents_failed, report
        receipts = [
            open_record(link.receipt, AccessReceipt).record
            for link in await patient.h.store.audit_links()
            if link.seq > last
        ]
        assert sorted((r.doc == big, r.docs is None) for r in receipts) == [(False, False), (True, True)]
        (batch,) = [r for r in receipts if r.docs]
        assert set(batch.documents) == set(wanted) - {big}
        for doc, expected in wanted.items():
            assert await reader.clinic.read_held(doc, now=now()) == expected
    finally:
        await reader.stop()


async def test_sync_groups_batches_within_both_caps() -> None:
    """``_batches``: at most 256 documents, their padded sizes (which bound their streams) within 768 KiB, in order."""
    month = 202601
    entries = [AcceptedEntry(doc=os.urandom(32), padded_size=1024, month=month) for _ in range(600)]
    entries += [AcceptedEntry(doc=os.urandom(32), padded_size=BATCH_LARGEST, month=month) for _ in range(30)]
    entries += [AcceptedEntry(doc=os.urandom(32), padded_size=4096, month=month) for _ in range(10)]
    sizes = {entry.doc: entry.padded_size for entry in entries}
    batches = _batches(entries)
    assert [doc for batch in batches for doc in batch] == [entry.doc for entry in entries]
    for batch in batches:
        assert 1 <= len(batch) <= BATCH_MAX_DOCS
        assert sum(sizes[doc] for doc in batch) <= BATCH_MAX_BYTES
    assert [len(batch) for batch in batches[:2]] == [BATCH_MAX_DOCS, BATCH_MAX_DOCS]
    assert _batches([]) == []


async def test_a_key_kept_as_a_legacy_sealed_box_is_still_served(setting: Setting) -> None:
    """A document whose key the patient's node kept as a sealed box to itself (before keys_at_rest) is still
    read and served in a batch; the keys it keeps now are wraps of 73 bytes."""
    story = setting.story
    patient = story.patient
    doc = setting.small[29]
    sealed_key = (await patient.h.store.served_rows([doc]))[doc].sealed_key
    assert len(sealed_key) == 73 and sealed_key[:1] == b"\x02", "kept with wrap_at_rest"
    key = unwrap_at_rest(sealed_key, patient.h.encryption_keys, doc=doc)
    legacy = seal(key, patient.h.encryption.public_key, os.urandom(32))
    async with patient.h.store.transaction():
        await patient.h.db.execute("UPDATE documents SET sealed_key = ? WHERE id = ?", (legacy, doc))
    assert await patient.patient.read_own(doc) == setting.contents[doc]
    docs = [doc, setting.small[28]]
    contents = opened_streams(setting, answered(await fetch_batch_as(setting, docs)), docs)
    assert contents == {d: setting.contents[d] for d in docs}


# --- [API-70] steps 1 to 5: the receipt and the chain -----------------------------------------------------------


async def test_unsigned_batch_request(setting: Setting) -> None:
    story = setting.story
    receipt = batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    before = await snapshot(story.patient)
    answer = await send(
        story.session,
        "POST",
        url(setting),
        body=batch_body(receipt, [story.gp_grant]),
        headers={"Content-Type": "application/cbor"},
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


async def test_batch_request_signed_by_another_key_than_its_keyid(setting: Setting) -> None:
    story = setting.story
    impostor = Impostor(did=story.gp.did, key_of=story.lab.identity)
    receipt = batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    before = await snapshot(story.patient)
    answer = await send_signed(
        story.session, impostor, "POST", url(setting), batch_body(receipt, [story.gp_grant])
    )
    refused(answer, 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=False)


@pytest.mark.parametrize("how", ["signed-by-the-lab", "signature-flipped"])
async def test_batch_receipt_not_signed_by_the_requester(setting: Setting, how: str) -> None:
    """The GP's request carrying a receipt the lab signed, or whose signature was changed: nothing logged."""
    story = setting.story
    signer = story.lab.identity if how == "signed-by-the-lab" else story.gp.identity
    receipt = batch_receipt(
        signer, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    if how == "signature-flipped":
        receipt = receipt[:-1] + bytes([receipt[-1] ^ 0x01])
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, setting.small[:3], receipt=receipt), 401, "bad-signature")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_batch_receipt_for_another_patient(setting: Setting) -> None:
    story = setting.story
    receipt = batch_receipt(
        story.gp.identity, patient=story.lab.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, setting.small[:3], receipt=receipt), 403, "wrong-audience")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_chain_whose_last_link_is_not_the_receipts_grant(setting: Setting) -> None:
    story = setting.story
    other = await issue_grant(setting.story, story.gp.did)
    gp = story.gp.identity
    docs = setting.small[:3]
    cases = [
        # The receipt names another (live) grant of the GP's than the chain ends with.
        (batch_receipt(gp, patient=story.patient.did, docs=docs, grant=other).encoded, [story.gp_grant]),
        # An empty chain.
        (batch_receipt(gp, patient=story.patient.did, docs=docs, grant=story.gp_grant).encoded, []),
    ]
    for receipt, chain in cases:
        before = await snapshot(story.patient)
        answer = await send_signed(story.session, gp, "POST", url(setting), batch_body(receipt, chain))
        refused(answer, 403, "broken-chain")
        await assert_unchanged(story.patient, before, nonce_spent=True)


@pytest.mark.parametrize("state", ["revoked", "expired"])
async def test_dead_chain_refuses_the_batch_whatever_it_names(setting: Setting, state: str) -> None:
    """A revoked or expired grant: its code, the same answer for real and for random ids ([CAP-12])."""
    story = setting.story
    if state == "revoked":
        grant = await issue_grant(setting.story, story.gp.did)
        await story.patient.patient.revoke(grant.id, now=now())
    else:
        grant = await issue_grant(setting.story, story.gp.did, issued=now() - 2 * DAY, days=1)
    answers = []
    for docs in (
        setting.small[:4],
        [random_doc() for _ in range(4)],
        [story.docs["lithium"], story.docs["xray"]],
    ):
        before = await snapshot(story.patient)
        answer = await fetch_batch_as(setting, docs, chain=[grant])
        refused(answer, 403, state)
        await assert_unchanged(story.patient, before, nonce_spent=True)
        answers.append((answer.status, answer.body))
    assert len(set(answers)) == 1


@pytest.mark.parametrize(
    "fields",
    [
        "no-receipt",
        "no-chain",
        "receipt-not-bytes",
        "chain-not-a-list",
        "link-not-bytes",
        "profile-not-bytes",
    ],
)
async def test_batch_request_with_a_missing_or_mistyped_field(setting: Setting, fields: str) -> None:
    """``malformed`` ([API-2]), nothing logged."""
    story = setting.story
    receipt = batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    chain = [story.gp_grant.encoded]
    data = {
        "no-receipt": body(chain=chain),
        "no-chain": body(receipt=receipt),
        "receipt-not-bytes": body(chain=chain, receipt=receipt.hex()),
        "chain-not-a-list": body(chain=story.gp_grant.encoded, receipt=receipt),
        "link-not-bytes": body(chain=[1], receipt=receipt),
        "profile-not-bytes": body(chain=chain, receipt=receipt, profile="a profile"),
    }[fields]
    before = await snapshot(story.patient)
    refused(await send_signed(story.session, story.gp.identity, "POST", url(setting), data), 400, "malformed")
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_batch_profile_signed_by_someone_else(setting: Setting) -> None:
    """Step 7: an offered profile the requester did not sign is ``bad-signature``, nothing logged."""
    story = setting.story
    receipt = batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant
    ).encoded
    data = body(chain=[story.gp_grant.encoded], receipt=receipt, profile=story.lab.h.profile.encoded)
    before = await snapshot(story.patient)
    refused(
        await send_signed(story.session, story.gp.identity, "POST", url(setting), data), 401, "bad-signature"
    )
    await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_a_range_field_is_ignored(setting: Setting) -> None:
    """15.21: a batch is not resumed; a (signed) ``Range`` field changes nothing in the answer."""
    story = setting.story
    docs = [setting.small[7], setting.small[8]]
    receipt = batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=docs, grant=story.gp_grant
    ).encoded
    answer = await send_signed(
        story.session,
        story.gp.identity,
        "POST",
        url(setting),
        batch_body(receipt, [story.gp_grant]),
        headers={"Range": "bytes=10-"},
    )
    assert opened_streams(setting, answered(answer), docs) == {doc: setting.contents[doc] for doc in docs}


async def test_garbage_at_the_batch_endpoint_never_gets_a_500(setting: Setting) -> None:
    """Signed requests whose fields hold values of random types, or receipts cut or with a byte changed: a 4xx
    with a code each time, and nothing stored but nonces and the one read of the genuine receipt."""
    story = setting.story
    rng = random.Random(20260915)
    gp = story.gp.identity
    good = batch_receipt(gp, patient=story.patient.did, docs=setting.small[:3], grant=story.gp_grant).encoded
    values: list[Callable[[], object]] = [
        lambda: rng.randrange(-(2**63), 2**64),
        lambda: rng.randbytes(rng.randrange(0, 80)),
        lambda: "".join(rng.choice("abcé\u2603\0 ") for _ in range(rng.randrange(0, 20))),
        lambda: None,
        lambda: [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 3))],
        lambda: {"x": rng.randrange(5)},
        lambda: story.gp_grant.encoded,
        lambda: [story.gp_grant.encoded],
        lambda: good[: rng.randrange(len(good))],
        lambda: _flip_at(good, rng.randrange(len(good))),
    ]
    before = await snapshot(story.patient)
    seen: Counter[tuple[int, str | None]] = Counter()
    receipts: list[Callable[[], object]] = [
        lambda: good,
        lambda: good[: rng.randrange(len(good))],
        lambda: _flip_at(good, rng.randrange(len(good))),
        lambda: _flip_at(good, rng.randrange(len(good) - 64, len(good))),  # in the signature
    ]
    for _ in range(150):
        payload: dict[str, object] = {}
        if rng.random() < 0.9:
            payload["chain"] = [story.gp_grant.encoded] if rng.random() < 0.7 else rng.choice(values)()
        if rng.random() < 0.9:
            payload["receipt"] = rng.choice(receipts)() if rng.random() < 0.7 else rng.choice(values)()
        if rng.random() < 0.2:
            payload["profile"] = rng.choice(values)()
        try:
            data = body(**payload)
        except Exception:  # noqa: BLE001 - a value the encoder refuses: not a request to send
            continue
        answer = await send_signed(story.session, gp, "POST", url(setting), data)
        assert answer.status < 500, (payload, answer.status, answer.body[:100])
        if answer.status != 200:
            assert 400 <= answer.status < 500 and answer.code is not None, (answer.status, answer.body[:100])
        seen[(answer.status, answer.code)] += 1
    # Past the signature check into the handler: refusals of several steps, at most one read of the good receipt.
    assert len(seen) >= 4, seen
    served = seen[(200, None)]
    assert served <= 1, seen
    after = await snapshot(story.patient)
    assert after.digest["audit"][0] == before.digest["audit"][0] + served
    changed = sorted(
        t
        for t in before.digest
        if t not in ("nonces", "audit", "audit_docs") and before.digest[t] != after.digest[t]
    )
    assert not changed, changed
    assert after.files == before.files


def _flip_at(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# --- [API-70] step 6: every document, or none -----------------------------------------------------------------


@pytest.mark.parametrize("which", ["absent", "outside-scope", "restricted", "hidden"])
async def test_one_document_out_of_reach_refuses_the_whole_batch_as_not_found(
    setting: Setting, which: str
) -> None:
    """Among in-scope documents, one absent, out of scope (the X-ray), restricted (lithium, PSY) or hidden:
    ``not-found`` for the batch, byte for byte a single missing document's refusal, nothing logged."""
    story = setting.story
    hidden = setting.small[20]
    bad = {
        "absent": random_doc(),
        "outside-scope": story.docs["xray"],
        "restricted": story.docs["lithium"],
        "hidden": hidden,
    }[which]
    if which == "hidden":
        await story.patient.patient.hide(hidden)
    try:
        missing = await fetch_one_as_gp(setting, random_doc())
        refused(missing, 404, "not-found")
        for docs in (
            [*setting.small[:2], bad, story.docs["cbc"]],
            [bad, *setting.small[:2]],
            [*setting.small[:5], bad],
        ):
            before = await snapshot(story.patient)
            answer = await fetch_batch_as(setting, docs)
            refused(answer, 404, "not-found")
            assert (answer.status, answer.content_type, answer.body) == (
                missing.status,
                missing.content_type,
                missing.body,
            )
            await assert_unchanged(story.patient, before, nonce_spent=True)
    finally:
        if which == "hidden":
            await story.patient.patient.hide(hidden, hidden=False)
    # Control: without the bad document the same batch is served.
    assert (await fetch_batch_as(setting, [*setting.small[:2], story.docs["cbc"]])).status == 200


async def test_a_stored_document_corrupted_at_rest_refuses_the_batch(setting: Setting) -> None:
    """A file that no longer matches its id (disk damage) is never served: the batch is refused as
    ``not-found``, no 500, nothing logged; the same batch is served once the file is whole again."""
    story = setting.story
    damaged = setting.small[21]
    db = story.patient.h.db
    whole = await stored_stream(story.patient, damaged)
    assert whole is not None
    broken = bytearray(whole)
    broken[len(broken) // 2] ^= 0x01

    async def keep(stream: bytes) -> None:
        # A small document's stream is kept in its row (INLINE_STREAM_MAX).
        async with db.transaction():
            await db.execute("UPDATE documents SET stream = ? WHERE id = ?", (stream, damaged))

    await keep(bytes(broken))
    try:
        before = await snapshot(story.patient)
        answer = await fetch_batch_as(setting, [setting.small[0], damaged])
        refused(answer, 404, "not-found")
        await assert_unchanged(story.patient, before, nonce_spent=True)
        # Alone, through /v0/fetch: found before the receipt is logged, answered as missing (it was a 500).
        gp = story.gp.identity
        before = await snapshot(story.patient)
        body = fetch_body(gp, story, damaged, [story.gp_grant])
        answer = await send_signed(story.session, gp, "POST", story.patient.url + "/v0/fetch", body)
        refused(answer, 404, "not-found", signed=True)
        await assert_unchanged(story.patient, before, nonce_spent=True)
    finally:
        await keep(whole)
    assert (await fetch_batch_as(setting, [setting.small[0], damaged])).status == 200


async def test_another_stream_under_an_old_format_key_is_not_read_as_the_document(setting: Setting) -> None:
    """A row given another document's stream, with its key sealed to the node as earlier versions kept
    keys (a format anyone can make): the patient's own read refuses it, as does a reader's fetch."""
    story = setting.story
    patient, db = story.patient, story.patient.h.db
    victim, other = setting.small[28], setting.small[29]
    async with db.execute("SELECT stream, sealed_key FROM documents WHERE id = ?", (victim,)) as cursor:
        saved = await cursor.fetchone()
    other_stream = await stored_stream(patient, other)
    other_key = patient.patient._unseal(await patient.h.store.sealed_key(other), other)
    legacy = seal(other_key, patient.h.encryption.public_key, os.urandom(32))
    async with db.transaction():
        await db.execute("UPDATE documents SET stream = ?, sealed_key = ? WHERE id = ?", (other_stream, legacy, victim))
    try:
        with pytest.raises(LocalProtocolError) as caught:
            await patient.patient.read_own(victim)
        assert caught.value.code.value == "malformed"
    finally:
        async with db.transaction():
            await db.execute("UPDATE documents SET stream = ?, sealed_key = ? WHERE id = ?", (*saved, victim))
    assert await patient.patient.read_own(victim) == setting.content_of(victim)


async def test_not_found_says_neither_which_nor_how_many(setting: Setting) -> None:
    story = setting.story
    batches = [
        [*setting.small[:3], random_doc()],
        [*setting.small[:3], story.docs["xray"], story.docs["lithium"], random_doc()],
        [random_doc() for _ in range(40)],
        [story.docs["lithium"]],
    ]
    answers = [await fetch_batch_as(setting, docs) for docs in batches]
    assert len({(a.status, a.content_type, a.body) for a in answers}) == 1
    refused(answers[0], 404, "not-found")


# --- [API-70] step 9: the byte cap ------------------------------------------------------------------------------


async def test_streams_over_the_byte_cap(setting: Setting) -> None:
    """Three results of 300 KB: two fit in 768 KiB and are served; the three are ``too-large``, nothing logged."""
    story = setting.story
    contents = [os.urandom(300_000) for _ in range(3)]
    big = await deposit_and_accept(story, contents, title="Genome panel")
    rows = await story.patient.h.store.served_rows(big)
    sizes = [rows[doc].size for doc in big]
    assert sum(sizes[:2]) <= BATCH_MAX_BYTES < sum(sizes)
    fields = answered(await fetch_batch_as(setting, big[:2]))
    assert opened_streams(setting, fields, big[:2]) == dict(zip(big[:2], contents[:2], strict=True))
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, big), 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    # Step 6 comes first: with a missing document among them, the answer is not-found.
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, [*big, random_doc()]), 404, "not-found")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    # Each is still served on its own.
    assert (await fetch_one_as_gp(setting, big[2])).status == 200


async def test_byte_cap_is_at_most(setting: Setting, monkeypatch: pytest.MonkeyPatch) -> None:
    """The streams may add up to exactly ``BATCH_MAX_BYTES``, not one byte more (cap lowered in process)."""
    story = setting.story
    docs = setting.small[5:9]
    rows = await story.patient.h.store.served_rows(docs)
    total = sum(rows[doc].size for doc in docs)
    monkeypatch.setattr(patient_module, "BATCH_MAX_BYTES", total - 1)
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, docs), 413, "too-large")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    monkeypatch.setattr(patient_module, "BATCH_MAX_BYTES", total)
    assert (await fetch_batch_as(setting, docs)).status == 200


# --- [API-70] step 10, [API-73]: replay, and a batch receipt where one document is asked for ---------------------


async def test_replayed_batch_receipt(setting: Setting) -> None:
    """The same receipt in a second, freshly signed request: ``replay``, and one audit entry only."""
    story = setting.story
    docs = setting.small[6:10]
    receipt = batch_receipt(story.gp.identity, patient=story.patient.did, docs=docs, grant=story.gp_grant)
    assert (await fetch_batch_as(setting, docs, receipt=receipt.encoded)).status == 200
    before = await snapshot(story.patient)
    refused(await fetch_batch_as(setting, docs, receipt=receipt.encoded), 409, "replay")
    await assert_unchanged(story.patient, before, nonce_spent=True)
    # Nor as a single fetch: it is refused there before the log is even looked at ([API-73]).
    refused(await fetch_batch_as(setting, docs, receipt=receipt.encoded, path="/v0/fetch"), 400, "malformed")
    logged = [link for link in await story.patient.h.store.audit_links() if link.receipt == receipt.encoded]
    assert len(logged) == 1
    assert await audit_docs_of(story.patient, logged[0].seq) == sorted(docs)


async def test_receipt_with_docs_at_the_single_fetch_endpoint(setting: Setting) -> None:
    """[API-73]: ``malformed``, nothing logged, not a byte of a document -- even for a receipt that would pass."""
    story = setting.story
    docs = [story.docs["cbc"], *setting.small[:2]]
    before = await snapshot(story.patient)
    answer = await fetch_batch_as(setting, docs, path="/v0/fetch")
    refused(answer, 400, "malformed")
    assert "Fedrecord-Key-Wrap" not in answer.headers
    await assert_unchanged(story.patient, before, nonce_spent=True)


# --- receipts whose docs break the record's rules: refused when the record opens ----------------------------------


def _wire_of(setting: Setting, docs: Sequence[bytes]) -> dict[str, Any]:
    story = setting.story
    return batch_receipt(
        story.gp.identity, patient=story.patient.did, docs=docs, grant=story.gp_grant
    ).record.to_wire()


@pytest.mark.parametrize(
    "rule", ["docs-repeats-doc", "256-docs", "empty-docs", "docs-out-of-order", "docs-twice"]
)
async def test_receipt_whose_docs_break_the_record_rules(setting: Setting, rule: str) -> None:
    story = setting.story
    first, *others = setting.small[:4]
    wire = _wire_of(setting, [first, *others])
    wire["docs"] = {
        "docs-repeats-doc": sorted([first, *others]),
        "256-docs": sorted([*others, *(random_doc() for _ in range(256 - len(others)))]),
        "empty-docs": [],
        "docs-out-of-order": sorted(others, reverse=True),
        "docs-twice": sorted([*others, others[0]]),
    }[rule]
    receipt = forged_receipt(story.gp.identity, wire)
    for path in (BATCH_PATH, "/v0/fetch"):
        before = await snapshot(story.patient)
        refused(await fetch_batch_as(setting, [first], receipt=receipt, path=path), 400, "invalid-record")
        await assert_unchanged(story.patient, before, nonce_spent=True)


async def test_receipt_of_256_documents_opens(setting: Setting) -> None:
    """Control for the 256-docs case: ``doc`` and 255 ``docs`` is a valid receipt; random ids are not found."""
    story = setting.story
    wire = _wire_of(setting, setting.small[:2])
    wire["docs"] = sorted([setting.small[1], *(random_doc() for _ in range(254))])
    assert len(wire["docs"]) == 255
    before = await snapshot(story.patient)
    refused(
        await fetch_batch_as(setting, [], receipt=forged_receipt(story.gp.identity, wire)), 404, "not-found"
    )
    await assert_unchanged(story.patient, before, nonce_spent=True)


# --- [API-72]: the clinic's checks of a batch answer ----------------------------------------------------------------


def tamper_answers(
    monkeypatch: pytest.MonkeyPatch, setting: Setting, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """The GP's client changes each batch answer with ``change`` (after the patient's node answered it)."""
    gp = setting.story.gp
    real_call = gp.client.call  # type: ignore[union-attr]

    async def tampering(method: str, target: str, **fields: Any) -> dict[str, Any]:
        answer = await real_call(method, target, **fields)
        return change(dict(answer)) if target.endswith(BATCH_PATH) else answer

    monkeypatch.setattr(gp.client, "call", tampering)


async def assert_nothing_kept(setting: Setting, docs: Sequence[bytes]) -> None:
    gp = setting.story.gp
    for doc in docs:
        assert await gp.h.store.held_copy(doc) is None, doc.hex()
        assert not gp.h.files.path_of(doc).exists(), doc.hex()
    assert not list((gp.h.files.root / "tmp").glob("*"))


def _wrap(answer: dict[str, Any]) -> Signed[KeyWrap]:
    return open_record(answer["wrap"], KeyWrap)


def _keys_of(setting: Setting, answer: dict[str, Any]) -> dict[bytes, bytes]:
    wrap = _wrap(answer)
    keys = setting.story.gp.h.keys_for(wrap.record.recipient_key)
    assert keys is not None
    return unwrap_keys(wrap, recipient=setting.story.gp.did, keys=keys, documents=wrap.record.documents)


def _rewrapped(
    setting: Setting,
    answer: dict[str, Any],
    pairs: Sequence[tuple[bytes, bytes]],
    *,
    recipient: str | None = None,
    recipient_key: bytes | None = None,
) -> bytes:
    """A genuine patient-signed wrap, for the (doc, key) pairs given: to the GP, unless told otherwise."""
    record = _wrap(answer).record
    return wrap_keys(
        wrapper=setting.story.patient.identity,
        recipient=recipient or record.recipient,
        recipient_key=recipient_key or record.recipient_key,
        keys=pairs,
        purpose=record.purpose,
        grant=record.grant,
        iat=now(),
        ephemeral_seed=os.urandom(32),
    ).encoded


def _drop_a_stream(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "streams": answer["streams"][:-1]}


def _add_a_stream(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "streams": [*answer["streams"], answer["streams"][0]]}


def _a_stream_not_bytes(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "streams": [*answer["streams"][:-1], "not bytes"]}


def _wrap_signed_by_the_lab(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "wrap": sign_record(_wrap(answer).record, setting.story.lab.identity).encoded}


def _wrap_byte_flipped(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    wrap = bytearray(answer["wrap"])
    wrap[len(wrap) // 2] ^= 0x01
    return {**answer, "wrap": bytes(wrap)}


def _wrap_for_other_documents(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    """Patient-signed, but one of the documents swapped for another the GP may read."""
    keys = _keys_of(setting, answer)
    pairs = [*[*keys.items()][:-1], (setting.story.docs["cbc"], os.urandom(32))]
    return {**answer, "wrap": _rewrapped(setting, answer, pairs)}


def _wrap_for_fewer_documents(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "wrap": _rewrapped(setting, answer, [*_keys_of(setting, answer).items()][:-1])}


def _wrap_of_one_document(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    return {**answer, "wrap": _rewrapped(setting, answer, [*_keys_of(setting, answer).items()][:1])}


def _outer_docs_not_the_sealed_ones(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    """The outer record names the documents asked for; the sealed secret was made for others ([WRAP-6])."""
    genuine = _wrap(answer).record
    keys = _keys_of(setting, answer)
    pairs = [*[*keys.items()][:-1], (setting.story.docs["cbc"], os.urandom(32))]
    other = _wrap({"wrap": _rewrapped(setting, answer, pairs)}).record
    forged = dataclasses.replace(genuine, sealed=other.sealed)
    return {**answer, "wrap": sign_record(forged, setting.story.patient.identity).encoded}


def _wrap_to_another_reader(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    """Patient-signed for the same documents, but addressed to the lab (sealed to the GP's key all the same)."""
    pairs = [*_keys_of(setting, answer).items()]
    return {**answer, "wrap": _rewrapped(setting, answer, pairs, recipient=setting.story.lab.did)}


def _wrap_to_a_key_we_do_not_hold(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    pairs = [*_keys_of(setting, answer).items()]
    other_key = encryption_keys("not the GP's").public_key
    return {**answer, "wrap": _rewrapped(setting, answer, pairs, recipient_key=other_key)}


def _secret_with_a_key_missing(setting: Setting, answer: dict[str, Any]) -> dict[str, Any]:
    """A sealed secret whose ``keys`` has one item fewer than its ``docs``: unreadable binding."""
    genuine = _wrap(answer).record
    keys = _keys_of(setting, answer)
    secret = WrapSecret(
        key=keys[genuine.doc],
        doc=genuine.doc,
        recipient=genuine.recipient,
        wrapper=setting.story.patient.did,
        purpose=genuine.purpose,
        grant=genuine.grant,
        docs=genuine.docs,
        keys=tuple(keys[doc] for doc in genuine.docs or ()),
    ).to_wire()
    secret["keys"] = secret["keys"][:-1]
    sealed = seal(cbor.encode(secret), genuine.recipient_key, os.urandom(32))
    forged = dataclasses.replace(genuine, sealed=sealed)
    return {**answer, "wrap": sign_record(forged, setting.story.patient.identity).encoded}


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (_drop_a_stream, "malformed"),
        (_add_a_stream, "malformed"),
        (_a_stream_not_bytes, "malformed"),
        (_wrap_signed_by_the_lab, "bad-signature"),
        (_wrap_byte_flipped, "bad-signature"),
        (_wrap_for_other_documents, "wrap-mismatch"),
        (_wrap_for_fewer_documents, "wrap-mismatch"),
        (_wrap_of_one_document, "wrap-mismatch"),
        (_outer_docs_not_the_sealed_ones, "wrap-mismatch"),
        (_secret_with_a_key_missing, "wrap-mismatch"),
        (_wrap_to_another_reader, "wrap-mismatch"),
        (_wrap_to_a_key_we_do_not_hold, "wrap-mismatch"),
    ],
    ids=[
        "one-stream-fewer",
        "one-stream-more",
        "stream-not-bytes",
        "wrap-signed-by-lab",
        "wrap-byte-flipped",
        "wrap-for-other-documents",
        "wrap-for-fewer-documents",
        "wrap-of-one-document",
        "sealed-docs-differ",
        "sealed-keys-one-short",
        "wrap-to-another-reader",
        "wrap-to-another-key",
    ],
)
async def test_batch_answer_that_does_not_hold_together_keeps_nothing(
    setting: Setting, monkeypatch: pytest.MonkeyPatch, tamper: Any, code: str
) -> None:
    """The whole answer is refused with its code; no copy, row or file of any document of the batch."""
    story = setting.story
    docs = setting.small[22:26]
    tamper_answers(monkeypatch, setting, lambda answer: tamper(setting, answer))
    before = await snapshot(story.gp)
    with pytest.raises(RemoteProtocolError) as caught:
        await story.gp.clinic.fetch_batch(story.patient.did, docs, now=now())
    assert caught.value.code.value == code, caught.value
    await assert_unchanged(story.gp, before, nonce_spent=False)
    await assert_nothing_kept(setting, docs)


def _flip_stream_byte(index: int) -> Callable[[Setting, dict[str, Any], int], dict[str, Any]]:
    def change(setting: Setting, answer: dict[str, Any], which: int) -> dict[str, Any]:
        streams = list(answer["streams"])
        stream = bytearray(streams[which])
        stream[index] ^= 0x01
        streams[which] = bytes(stream)
        return {**answer, "streams": streams}

    return change


def _reencrypted_under_the_same_key(setting: Setting, answer: dict[str, Any], which: int) -> dict[str, Any]:
    """The same content and header, encrypted again under the same key with a new prefix: it decrypts and
    verifies, but it is not the document asked for (another id, [ENC-6])."""
    wrap = _wrap(answer).record
    doc = wrap.documents[which]
    key = _keys_of(setting, answer)[doc]
    reader = DocumentReader(key, expected_patient=setting.story.patient.did)
    content = b"".join(reader.decrypt((answer["streams"][which],)))
    assert reader.header is not None
    prefix = os.urandom(16)
    header: DocumentHeader = dataclasses.replace(reader.header.record, commitment=key_commitment(key, prefix))
    writer = DocumentWriter(setting.story.lab.identity, header, key=key, prefix=prefix)
    stream = b"".join(writer.encrypt([content]))
    assert writer.document_id != doc
    streams = list(answer["streams"])
    streams[which] = stream
    return {**answer, "streams": streams}


def _swapped_with_the_next(setting: Setting, answer: dict[str, Any], which: int) -> dict[str, Any]:
    streams = list(answer["streams"])
    streams[which], streams[which + 1] = streams[which + 1], streams[which]
    return {**answer, "streams": streams}


@pytest.mark.parametrize(
    ("tamper", "failing", "codes", "first"),
    [
        # A changed byte changes the id, checked first ([API-72], [ENC-6]).
        (_flip_stream_byte(-1), [1], {"malformed"}, 0),
        (_flip_stream_byte(10), [2], {"malformed"}, 3),
        (_flip_stream_byte(0), [0], {"malformed"}, 6),
        (_reencrypted_under_the_same_key, [1], {"malformed"}, 9),
        (_swapped_with_the_next, [1, 2], {"malformed"}, 12),
    ],
    ids=["last-tag-byte", "prefix-byte", "magic-byte", "reencrypted-same-key", "two-streams-swapped"],
)
async def test_a_stream_that_fails_keeps_nothing_of_its_document(
    setting: Setting,
    monkeypatch: pytest.MonkeyPatch,
    tamper: Any,
    failing: list[int],
    codes: set[str],
    first: int,
) -> None:
    """Each document stands alone ([API-72]): the failing ones are reported and not kept, the others are."""
    story = setting.story
    # Each case takes three documents of its own, none of which the GP holds yet.
    docs = setting.small[first : first + 3]
    await assert_nothing_kept(setting, docs)
    asked = (docs[0], *sorted(docs[1:]))
    tamper_answers(monkeypatch, setting, lambda answer: tamper(setting, answer, failing[0]))
    failed = await story.gp.clinic.fetch_batch(story.patient.did, docs, now=now())
    bad = [asked[i] for i in failing]
    assert set(failed) == set(bad), failed
    assert set(failed.values()) <= codes, failed
    await assert_nothing_kept(setting, bad)
    for doc in asked:
        if doc not in bad:
            assert await story.gp.clinic.read_held(doc, now=now()) == setting.content_of(doc)
    # What was refused comes whole with the next fetch (the patient's node never sent anything wrong).
    monkeypatch.undo()
    for doc in bad:
        assert await story.gp.clinic.fetch(story.patient.did, doc, now=now()) == setting.content_of(doc)


# --- the audit log with batch entries ---------------------------------------------------------------------------


async def test_audit_log_with_batch_entries_verifies(setting: Setting) -> None:
    story = setting.story
    docs = setting.small[14:20]
    assert (await fetch_batch_as(setting, docs)).status == 200
    links = await story.patient.h.store.audit_links()
    assert any(open_record(link.receipt, AccessReceipt).record.docs for link in links)
    ok, count, message = await story.patient.patient.verify_audit()
    assert ok, message
    assert count == len(links)
    await story.patient.patient.forget_audit_verification()
    standing = await story.patient.patient.verify_audit_since_last()
    assert standing.broken is None and standing.verified == standing.total == links[-1].seq


async def test_a_receipt_id_changed_in_the_log_is_found(setting: Setting) -> None:
    """The receipt id the log indexes (by which a receipt used twice is refused) is checked against the receipt."""
    story = setting.story
    assert (await fetch_batch_as(setting, setting.small[10:12])).status == 200
    db = story.patient.h.db
    seq, _hash = await story.patient.h.store.audit_tail()  # type: ignore[misc]
    async with db.execute("SELECT receipt_id FROM audit WHERE seq = ?", (seq,)) as cursor:
        (real,) = await cursor.fetchone()
    async with db.transaction():
        await db.execute("UPDATE audit SET receipt_id = ? WHERE seq = ?", (bytes(32), seq))
    try:
        ok, _count, message = await story.patient.patient.verify_audit()
        assert not ok and f"entry {seq}" in message and "receipt id" in message
    finally:
        async with db.transaction():
            await db.execute("UPDATE audit SET receipt_id = ? WHERE seq = ?", (real, seq))
    assert (await story.patient.patient.verify_audit())[0]


async def test_listing_by_document_finds_the_batch_entry_under_each_document(setting: Setting) -> None:
    """The web page's listing by document (``audit_page`` with ``AuditFilter(doc=...)``) and "who read it"."""
    story = setting.story
    docs = [setting.small[21], *setting.small[17:20]]
    assert (await fetch_batch_as(setting, docs)).status == 200
    seq, _hash = await story.patient.h.store.audit_tail()  # type: ignore[misc]
    store = story.patient.h.store
    for doc in docs:
        listed = await store.audit_page(AuditFilter(doc=doc), limit=100)
        assert seq in [row.seq for row in listed], doc.hex()
        mine = await store.audit_page(AuditFilter(doc=doc, reader=story.gp.did), limit=100)
        assert seq in [row.seq for row in mine]
        assert story.gp.did in await store.audit_readers_of(doc)
    # Not under a document it did not name, nor under another reader.
    assert seq not in [
        row.seq for row in await store.audit_page(AuditFilter(doc=setting.small[29]), limit=100)
    ]
    assert seq not in [
        row.seq for row in await store.audit_page(AuditFilter(doc=docs[0], reader=story.lab.did), limit=100)
    ]


async def test_migration_5_fills_audit_docs_for_older_entries(tmp_path: Path) -> None:
    """A database at schema 4 with two audit entries: migration 5 gives each its document in audit_docs."""
    path = tmp_path / "node.db"
    db = await open_database(path, MIGRATIONS[:4])
    entries = [(1, random_doc()), (2, random_doc())]
    try:
        async with transaction(db):
            for seq, doc in entries:
                await db.execute(
                    "INSERT INTO audit (seq, receipt_id, receipt, reader, doc, grant_id, purpose, at, prev_hash,"
                    " entry_hash, countersignature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        os.urandom(32),
                        b"receipt",
                        "did:key:z6Mk",
                        doc,
                        bytes(32),
                        "treatment",
                        1,
                        bytes(32),
                        os.urandom(32),
                        bytes(64),
                    ),
                )
        tables = await db.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'audit_docs'")
        assert tables == []
    finally:
        await db.close()
    db = await open_database(path, MIGRATIONS)
    try:
        rows = await db.execute_fetchall("SELECT seq, doc FROM audit_docs ORDER BY seq")
        assert [tuple(row) for row in rows] == entries
    finally:
        await db.close()


async def test_migration_7_drops_the_index_audit_docs_replaced(tmp_path: Path) -> None:
    """A database at schema 5, as that migration was released, loses audit_by_doc; a fresh one has none."""
    index = "SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'audit_by_doc'"
    old = tmp_path / "old.db"
    db = await open_database(old, MIGRATIONS[:5])
    try:
        assert await db.execute_fetchall(index) != []
    finally:
        await db.close()
    for path in (old, tmp_path / "fresh.db"):
        db = await open_database(path, MIGRATIONS)
        try:
            assert await db.execute_fetchall(index) == []
        finally:
            await db.close()


# --- found while writing these tests --------------------------------------------------------------------------


async def test_verify_audit_finds_an_audit_docs_row_removed(setting: Setting) -> None:
    """The listing by document reads ``audit_docs``, outside the hash chain: verify_audit checks it against
    each entry's receipt, so a row deleted by someone with the database but not the key -- hiding a read
    from the page's listing by document and from ``audit_readers_of`` -- breaks the verification.

    (Found failing while these tests were written: verify_audit compared only the ``audit`` columns.)
    """
    story = setting.story
    docs = setting.small[:3]
    assert (await fetch_batch_as(setting, docs)).status == 200
    seq, _hash = await story.patient.h.store.audit_tail()  # type: ignore[misc]
    hidden = sorted(docs)[1]
    db = story.patient.h.db
    where = "FROM audit_docs WHERE seq = ? AND doc = ?"
    columns = [row[1] for row in await db.execute_fetchall("PRAGMA table_info(audit_docs)")]
    (removed,) = await db.execute_fetchall(f"SELECT {', '.join(columns)} {where}", (seq, hidden))
    async with story.patient.h.store.transaction():
        await db.execute(f"DELETE {where}", (seq, hidden))
    try:
        assert seq not in [
            row.seq for row in await story.patient.h.store.audit_page(AuditFilter(doc=hidden), limit=100)
        ]
        ok, _count, message = await story.patient.patient.verify_audit()
        assert not ok, "a read removed from the listing by document is not found by verify_audit"
        assert f"entry {seq}" in message
    finally:
        async with story.patient.h.store.transaction():
            await db.execute(
                f"INSERT INTO audit_docs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                tuple(removed),
            )
        assert (await story.patient.patient.verify_audit())[0]


async def test_cli_audit_verifies_and_names_every_document_of_a_batch(setting: Setting) -> None:
    """``fedrecord audit --verify --json`` in a process of its own, against the patient's home while it serves.

    The verification passes with batch entries, and an entry whose receipt read several documents
    names every one of them (15.10: such an entry records a read of every document it names).
    """
    story = setting.story
    docs = [setting.small[25], *setting.small[11:13]]
    assert (await fetch_batch_as(setting, docs)).status == 200
    seq, _hash = await story.patient.h.store.audit_tail()  # type: ignore[misc]
    result = await cli_json(story.patient, "audit", "--verify")
    assert result["verified"]["ok"], result["verified"]
    assert result["verified"]["entries"] == len(result["entries"]) >= seq
    (entry,) = [e for e in result["entries"] if e["seq"] == seq]
    listed = json.dumps(entry)
    assert docs[0].hex() in listed
    missing = [doc.hex()[:16] for doc in docs[1:] if doc.hex() not in listed]
    assert not missing, f"the CLI's entry {seq} does not name {missing}: {entry}"
