"""Who looked, for batch reads (spec 15.21): one receipt for several documents is one entry of the log.

The page shows such an entry once, named by its first document (or, filtered
by a document, by that one) with "and N more documents", in English and in
French, and its chain verification still says the log is intact.  The story of
:func:`tests.node_helpers.build_story` runs over real nodes; a batch is read by
the GP over HTTP (:meth:`ClinicNode.fetch_batch`, served by
:meth:`PatientNode.fetch_batch`), and larger batches are receipts signed with
the GP's key and logged by the patient node's own countersigning path.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fedrecord.core import AccessReceipt, Scope, sign_record
from fedrecord.node.store import SqliteNodeStore
from fedrecord.web.pages import audit

from ..node_helpers import Story, now
from .test_document_actions_and_audit import (
    Site,
    no_missing_texts,
    rows_of,
    seqs_of,
    signed_in_site,
)

DAY = 86_400


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with signed_in_site(tmp_path) as signed_in:
        yield signed_in


async def grant_the_gp_everything(story: Story) -> None:
    """Replace the GP's grant (lab results, PSY and SEX hidden) by one over lab results and imaging."""
    patient = story.patient.patient
    await patient.revoke(story.gp_grant.id, now=now())
    await patient.grant(
        audience=story.gp.did,
        scope=Scope(categories=("lab", "imaging"), since=now() - 365 * DAY, past=True, future=True),
        actions=("read",),
        purpose="treatment",
        days=90,
        now=now(),
    )
    await story.gp.clinic.poll(story.patient.did, now=now())


async def log_batch(story: Story, first: bytes, others: tuple[bytes, ...]) -> None:
    """A batch receipt signed with the GP's key, logged as the patient node logs every read it serves."""
    receipt = sign_record(
        AccessReceipt(
            patient=story.patient.did,
            doc=first,
            docs=tuple(sorted(others)),
            grant=story.gp_grant.id,
            action="read",
            purpose="treatment",
            iat=now(),
            nonce=os.urandom(16),
        ),
        story.gp.h.identity,
    )
    patient = story.patient.patient
    async with patient.store.transaction():
        await patient._append_audit(receipt, now=now())


def document_cell(row: str) -> str:
    cells = re.findall(r"<td>(.*?)</td>", row, re.S)
    assert len(cells) == 5, row
    return cells[2]


async def test_a_batch_read_over_http_is_one_entry_named_by_its_first_document(site: Site) -> None:
    story = site.story
    await grant_the_gp_everything(story)
    cbc, lithium, xray = story.docs["cbc"], story.docs["lithium"], story.docs["xray"]
    failed = await story.gp.clinic.fetch_batch(story.patient.did, [cbc, lithium, xray], now=now())
    assert failed == {}
    assert [row.seq for row in await story.patient.patient.audit_log()] == [1]

    page = await site.get("/audit")
    rows = rows_of(page)
    assert len(rows) == 1 and seqs_of(page) == [1]
    cell = document_cell(rows[0])
    assert f'<a href="/record/{cbc.hex()}">Complete blood count</a> and 2 more documents' in cell
    assert f'href="/audit?doc={cbc.hex()}"' in cell  # the link filters by the document named
    assert "Lithium level" not in cell and "Chest X-ray report" not in cell
    assert 'class="notice chain-ok" role="status"' in page
    assert "The log is intact as far as checked: its entry was checked" in page
    no_missing_texts(page)

    french = await site.get("/audit", language="fr")
    assert "Complete blood count</a> et 2 autres documents" in document_cell(rows_of(french)[0])
    assert "Le journal est intact pour ce qui a été vérifié : son entrée a été vérifiée" in french
    no_missing_texts(french)

    # Filtered by a document that is not the batch's first, the entry is found and named by it.
    for doc, title in ((lithium, "Lithium level"), (xray, "Chest X-ray report")):
        page = await site.get(f"/audit?doc={doc.hex()}")
        rows = rows_of(page)
        assert len(rows) == 1 and seqs_of(page) == [1], title
        cell = document_cell(rows[0])
        assert f'<a href="/record/{doc.hex()}">{title}</a> and 2 more documents' in cell
        assert "Complete blood count" not in cell and "/audit?doc=" not in cell
        assert f"Only reads of: {title}" in page
        french = await site.get(f"/audit?doc={doc.hex()}", language="fr")
        assert f"{title}</a> et 2 autres documents" in french
    page = await site.get(f"/audit?doc={cbc.hex()}")
    assert "Complete blood count</a> and 2 more documents" in page and seqs_of(page) == [1]


async def test_plural_forms_and_filters_over_batches_and_single_reads(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = site.story
    cbc, lithium = story.docs["cbc"], story.docs["lithium"]
    await story.gp.clinic.fetch(story.patient.did, cbc, now=now())  # 1: a single read
    await log_batch(story, cbc, (lithium,))  # 2: one more document
    unknown = tuple(os.urandom(32) for _ in range(24))
    await log_batch(story, cbc, unknown)  # 3: 24 more documents, none held here
    await log_batch(story, lithium, (cbc, *unknown[:3]))  # 4: cbc not first

    counted: list[list[int]] = []
    original = SqliteNodeStore.audit_doc_counts

    async def counting(self: SqliteNodeStore, seqs: Sequence[int]) -> dict[int, int]:
        counted.append(list(seqs))
        return await original(self, seqs)

    monkeypatch.setattr(SqliteNodeStore, "audit_doc_counts", counting)
    page = await site.get("/audit")
    assert counted == [[4, 3, 2, 1]]  # one query for the whole page
    assert seqs_of(page) == [4, 3, 2, 1]
    cells = [document_cell(row) for row in rows_of(page)]
    assert cells[0].startswith(f'<a href="/record/{lithium.hex()}">Lithium level</a> and 4 more documents<br>')
    assert cells[1].startswith("<a href=") and "Complete blood count</a> and 24 more documents<br>" in cells[1]
    assert "Complete blood count</a> and 1 more document<br>" in cells[2]
    assert "Complete blood count</a><br>" in cells[3] and "more" not in cells[3]
    assert "The log is intact as far as checked: each of its 4 entries was checked once" in page
    no_missing_texts(page)

    french = await site.get("/audit", language="fr")
    cells = [document_cell(row) for row in rows_of(french)]
    assert "Lithium level</a> et 4 autres documents<br>" in cells[0]
    assert "Complete blood count</a> et 24 autres documents<br>" in cells[1]
    assert "Complete blood count</a> et 1 autre document<br>" in cells[2]
    assert "autre" not in cells[3]
    assert "chacune de ses 4 entrées a été vérifiée une fois" in french
    no_missing_texts(french)

    # By the blood count: the single read, both batches it leads, and the one it is not first in.
    page = await site.get(f"/audit?doc={cbc.hex()}")
    assert seqs_of(page) == [4, 3, 2, 1]
    cells = [document_cell(row) for row in rows_of(page)]
    assert all(f'<a href="/record/{cbc.hex()}">Complete blood count</a>' in cell for cell in cells)
    assert [re.sub(r"<[^>]+>", "", cell) for cell in cells] == [
        "Complete blood count and 4 more documents",
        "Complete blood count and 24 more documents",
        "Complete blood count and 1 more document",
        "Complete blood count",
    ]
    # By a document this node does not hold, named in a batch only: found, named as a deleted one.
    page = await site.get(f"/audit?doc={unknown[5].hex()}")
    assert seqs_of(page) == [3]
    assert re.sub(r"<[^>]+>", "", document_cell(rows_of(page)[0])) == "a deleted document and 24 more documents"
    french = await site.get(f"/audit?doc={unknown[1].hex()}", language="fr")
    assert seqs_of(french) == [4, 3]
    assert [re.sub(r"<[^>]+>", "", document_cell(row)) for row in rows_of(french)] == [
        "un document supprimé et 4 autres documents",
        "un document supprimé et 24 autres documents",
    ]
    # With the reader filter too, and the chain still verifies as a whole.
    assert seqs_of(await site.get(f"/audit?doc={lithium.hex()}&reader={story.gp.did}")) == [4, 2]
    assert await site.patient.verify_audit() == (True, 4, "the audit chain verifies")
    assert "each of its 4 entries was checked once" in await site.get("/audit")


async def test_a_page_of_batches_reads_its_counts_once_and_pages_by_entry(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    story = site.story
    cbc = story.docs["cbc"]
    for _ in range(5):
        await log_batch(story, cbc, tuple(os.urandom(32) for _ in range(2)))
    monkeypatch.setattr(audit, "PAGE_SIZE", 2)
    page = await site.get("/audit")
    assert seqs_of(page) == [5, 4] and page.count("and 2 more documents") == 2
    page = await site.get("/audit?before=4")
    assert seqs_of(page) == [3, 2] and page.count("and 2 more documents") == 2
    page = await site.get("/audit?after=2")
    assert seqs_of(page) == [4, 3]
    assert await story.patient.h.store.audit_doc_counts([]) == {}
    assert await story.patient.h.store.audit_doc_counts([1, 5, 99]) == {1: 3, 5: 3}
