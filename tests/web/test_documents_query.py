"""The record's timeline as the store queries it: filters, order, counts, pages, facets, one document.

The web page's record (``documents_view``) reads only these queries, so that its time does not
grow with the size of the record (issue 6, scale; ``benchmarks/web.py``).  They run on the
node's real database (migrations and all), with rows written through the store's own methods.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from fedrecord.core import Deposit
from fedrecord.core.lifecycle import DocumentState
from fedrecord.node.schema import MIGRATIONS
from fedrecord.node.store import RecordFacets, RecordFilter, SqliteNodeStore
from fedrecord.storage.sqlite import Database, open_database

PATIENT = "did:key:z6MkPatient"
LAB = "did:key:z6MkLab"
GP = "did:key:z6MkGp"

# (name, title, category, labels, date, author, accepted)
DOCUMENTS = (
    ("cbc", "Complete blood count", "lab", (), 500, LAB, True),
    ("lithium", "Lithium level", "lab", ("PSY",), 400, LAB, True),
    ("xray", "Chest X-ray report", "imaging", (), 300, GP, True),
    ("echo", "Échographie abdominale", "imaging", ("GDIS",), 300, GP, True),
    ("note", "Consultation note: blood pressure", "note", ("PSY", "SEX"), 200, GP, True),
    ("psyche", "Note on PSYCHE", "note", ("PSYCHE",), 100, GP, True),
    ("waiting", "Blood count (waiting in the inbox)", "lab", ("PSY",), 600, LAB, False),
)


def doc(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def ids(rows: Sequence[object]) -> list[bytes]:
    return [row.doc for row in rows]  # type: ignore[attr-defined]


def newest_first(names: Sequence[str]) -> list[bytes]:
    """The documents named, in the timeline's order: date descending, then id descending."""
    dates = {d[0]: d[4] for d in DOCUMENTS}
    return [doc(n) for n in sorted(names, key=lambda n: (dates[n], doc(n)), reverse=True)]


async def add(store: SqliteNodeStore, name: str, title: str, category: str, labels: Sequence[str], date: int,
              author: str, accepted: bool) -> None:  # fmt: skip
    async with store.transaction():
        await store.insert_document(
            doc=doc(name),
            patient=PATIENT,
            author=author,
            deposit=doc("deposit " + name),
            title=title,
            doc_type="report",
            category=category,
            labels=json.dumps(list(labels)),
            date=date,
            size=1000 + date,
            sealed_key=b"k" * 80,
            state=DocumentState.INBOX,
        )
        if accepted:
            await store.accept_document(
                doc(name), labels=json.dumps(sorted(labels)), added=date + 1, state=DocumentState.ACCEPTED
            )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteNodeStore]:
    db: Database = await open_database(tmp_path / "node.db", MIGRATIONS)
    store = SqliteNodeStore(db)
    for document in DOCUMENTS:
        await add(store, *document)
    try:
        yield store
    finally:
        await db.close()


ALL_ACCEPTED = ["cbc", "lithium", "xray", "echo", "note", "psyche"]


async def test_the_whole_record_newest_first_without_the_inbox(store: SqliteNodeStore) -> None:
    page = await store.record_page(RecordFilter(), limit=50, offset=0)
    assert ids(page.documents) == newest_first(ALL_ACCEPTED)
    assert page.matching == 6
    # Same date: the larger id first (a stable order, so pages do not overlap).
    xray, echo = ids(page.documents)[2:4]
    assert {xray, echo} == {doc("xray"), doc("echo")} and xray > echo
    first = page.documents[0]
    assert (first.title, first.category, json.loads(first.labels), first.date, first.added, first.hidden) == (
        "Complete blood count",
        "lab",
        [],
        500,
        501,
        0,
    )


async def test_pages_cover_the_record_once_and_count_it_all(store: SqliteNodeStore) -> None:
    seen = []
    for offset in range(0, 8, 4):
        page = await store.record_page(RecordFilter(), limit=4, offset=offset)
        assert page.matching == 6
        seen += ids(page.documents)
    assert seen == newest_first(ALL_ACCEPTED)
    beyond = await store.record_page(RecordFilter(), limit=4, offset=8)
    assert (beyond.documents, beyond.matching) == ([], 6)


async def test_by_category(store: SqliteNodeStore) -> None:
    page = await store.record_page(RecordFilter(category="imaging"), limit=50, offset=0)
    assert ids(page.documents) == newest_first(["xray", "echo"])
    assert page.matching == 2
    page = await store.record_page(RecordFilter(category="imaging"), limit=1, offset=1)
    assert (ids(page.documents), page.matching) == (newest_first(["echo"]), 2)
    assert (await store.record_page(RecordFilter(category="nothing"), limit=50, offset=0)).matching == 0


async def test_by_label_is_an_exact_label_not_a_part_of_one(store: SqliteNodeStore) -> None:
    page = await store.record_page(RecordFilter(label="PSY"), limit=50, offset=0)
    # Not "PSYCHE", and not the inbox document labelled PSY.
    assert ids(page.documents) == newest_first(["lithium", "note"])
    assert page.matching == 2
    page = await store.record_page(RecordFilter(label="PSY"), limit=1, offset=0)
    assert (ids(page.documents), page.matching) == (newest_first(["lithium"]), 2)
    assert (await store.record_page(RecordFilter(label="SY"), limit=50, offset=0)).matching == 0


async def test_by_words_of_the_title_ignoring_case_and_accents_case(store: SqliteNodeStore) -> None:
    page = await store.record_page(RecordFilter(words=("BLOOD",)), limit=50, offset=0)
    assert ids(page.documents) == newest_first(["cbc", "note"])
    assert page.matching == 2
    # Every word must appear; casefold, not ASCII-only lowercase.
    page = await store.record_page(RecordFilter(words=("blood", "count")), limit=50, offset=0)
    assert ids(page.documents) == [doc("cbc")]
    page = await store.record_page(RecordFilter(words=("ÉCHOGRAPHIE",)), limit=50, offset=0)
    assert ids(page.documents) == [doc("echo")]
    page = await store.record_page(RecordFilter(words=("blood",)), limit=1, offset=1)
    assert (ids(page.documents), page.matching) == (newest_first(["note"]), 2)


async def test_filters_combine(store: SqliteNodeStore) -> None:
    page = await store.record_page(
        RecordFilter(category="note", label="PSY", words=("blood",)), limit=50, offset=0
    )
    assert (ids(page.documents), page.matching) == ([doc("note")], 1)
    page = await store.record_page(
        RecordFilter(category="lab", label="PSY", words=("blood",)), limit=50, offset=0
    )
    assert (page.documents, page.matching) == ([], 0)


async def test_facets_of_the_record(store: SqliteNodeStore) -> None:
    assert await store.record_facets() == RecordFacets(
        total=6, categories=["imaging", "lab", "note"], labels=["GDIS", "PSY", "PSYCHE", "SEX"]
    )


async def test_kept_results_follow_changes_to_the_documents(store: SqliteNodeStore) -> None:
    """Counts, word matches and facets are kept between pages, but never outlive a change."""
    everything = RecordFilter()
    blood = RecordFilter(words=("blood",))
    psy = RecordFilter(label="PSY")
    for where in (everything, blood, psy):
        await store.record_page(where, limit=1, offset=0)
    await store.record_facets()
    async with store.transaction():
        await store.accept_document(
            doc("waiting"), labels=json.dumps(["PSY", "VIO"]), added=700, state=DocumentState.ACCEPTED
        )
    assert (await store.record_page(everything, limit=1, offset=0)).matching == 7
    assert ids((await store.record_page(blood, limit=5, offset=0)).documents) == newest_first(
        ["waiting", "cbc", "note"]
    )
    assert (await store.record_page(psy, limit=1, offset=0)).matching == 3
    facets = await store.record_facets()
    assert (facets.total, facets.categories, "VIO" in facets.labels) == (7, ["imaging", "lab", "note"], True)
    async with store.transaction():
        await store.set_labels(doc("lithium"), json.dumps([]))
        await store.set_hidden(doc("cbc"), True)
    assert (await store.record_page(psy, limit=1, offset=0)).matching == 2
    hidden = (await store.record_page(RecordFilter(category="lab"), limit=50, offset=0)).documents
    assert [row.hidden for row in hidden if row.doc == doc("cbc")] == [1]
    async with store.transaction():
        await store.forget_document(doc("note"), Deposit)
    assert (await store.record_page(blood, limit=5, offset=0)).matching == 2
    assert (await store.record_facets()).labels == ["GDIS", "PSY", "PSYCHE", "VIO"]


async def test_one_document_of_the_record(store: SqliteNodeStore) -> None:
    row = await store.accepted_document(doc("lithium"))
    assert row is not None and (row.doc, row.title, row.author) == (doc("lithium"), "Lithium level", LAB)
    assert await store.accepted_document(doc("waiting")) is None  # in the inbox, not the record
    assert await store.accepted_document(doc("absent")) is None


async def test_the_timeline_reads_the_indexes(store: SqliteNodeStore) -> None:
    """No scan of the whole table, and no sort, for the record newest first and for a category."""
    for where, params in (("", ()), (" AND category = ?", ("lab",))):
        plan = await store.db.execute_fetchall(
            "EXPLAIN QUERY PLAN SELECT id FROM documents WHERE state = 'accepted'"
            f"{where} ORDER BY date DESC, id DESC LIMIT 50",
            params,
        )
        details = " ".join(str(row[-1]) for row in plan)
        index = "documents_accepted_by_category" if where else "documents_accepted_by_date"
        # The ids in order, and the counts of the page, from the index alone: no row read for them.
        assert f"USING COVERING INDEX {index}" in details, details
        assert "TEMP B-TREE" not in details
        counted = await store.db.execute_fetchall(
            f"EXPLAIN QUERY PLAN SELECT count(*) FROM documents WHERE state = 'accepted'{where}", params
        )
        assert f"USING COVERING INDEX {index}" in " ".join(str(row[-1]) for row in counted)


async def test_the_inbox_and_the_copies_read_their_own_indexes(store: SqliteNodeStore) -> None:
    """Reads by another state have an index each, apart from the record's: a copy kept goes at its end."""
    for statement, params, index in (
        ("SELECT id FROM documents WHERE state = 'inbox' ORDER BY rowid", (), "documents_inbox"),
        (
            "SELECT id FROM documents WHERE patient = ? AND state = 'shared'",
            ("did:key:z6Mkx",),
            "documents_shared_by_patient",
        ),
    ):
        plan = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {statement}", params)
        details = " ".join(str(row[-1]) for row in plan)
        assert f"USING INDEX {index}" in details or f"USING COVERING INDEX {index}" in details, details
        assert "TEMP B-TREE" not in details
    indexed = {
        str(row[0]): str(row[1])
        for row in await store.db.execute_fetchall(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'documents' AND sql IS NOT NULL"
        )
    }
    # Every index of the table but its key is partial: no index holds all the rows by state or date.
    assert indexed and all(" WHERE state = " in sql for sql in indexed.values()), indexed
