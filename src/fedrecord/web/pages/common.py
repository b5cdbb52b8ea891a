"""What several pages share: document ids in URLs, plain-language label names, the documents view."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fedrecord.node.patient import PatientNode
from fedrecord.node.store import AcceptedRow, RecordFilter

from .. import i18n
from ..app import language_of

#: HL7 confidentiality and sensitivity codes, in plain words.
LABELS: dict[str, tuple[str, str]] = {
    "PSY": ("Mental health", "Santé mentale"),
    "SEX": ("Sexual health", "Santé sexuelle"),
    "HIV": ("HIV", "VIH"),
    "STD": ("Sexually transmitted infections", "Infections sexuellement transmissibles"),
    "SUD": ("Substance use", "Addictions"),
    "ETH": ("Alcohol and drugs", "Alcool et drogues"),
    "GDIS": ("Genetic information", "Informations génétiques"),
    "REPRO": ("Reproductive health", "Santé reproductive"),
    "SOC": ("Social services", "Services sociaux"),
    "VIO": ("Violence", "Violences"),
}

CATEGORIES: dict[str, tuple[str, str]] = {
    "lab": ("Lab results", "Résultats d'analyses"),
    "imaging": ("Imaging", "Imagerie"),
    "note": ("Notes", "Comptes rendus"),
    "prescription": ("Prescriptions", "Ordonnances"),
    "report": ("Reports", "Rapports"),
}


def doc_id(text: str) -> bytes | None:
    """The 32-byte id written as 64 hex digits in a URL or form, or None."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def _named(table: dict[str, tuple[str, str]], request: web.Request) -> Callable[[str], str]:
    index = i18n.LANGUAGES.index(language_of(request))

    def name(code: str) -> str:
        pair = table.get(code)
        return pair[index] if pair else code

    return name


def label_name(request: web.Request) -> Callable[[str], str]:
    """``label_name(request)("PSY")`` is "Mental health" (or its French)."""
    return _named(LABELS, request)


def category_name(request: web.Request) -> Callable[[str], str]:
    return _named(CATEGORIES, request)


@dataclass(frozen=True)
class DocumentsView:
    documents: list[dict[str, Any]]
    total: int
    matching: int
    categories: list[str]
    labels: list[str]
    #: Display names of the authors of the documents shown, by did.
    authors: dict[str, str]


async def documents_view(
    patient: PatientNode, *, query: str, category: str, label: str, limit: int, offset: int
) -> DocumentsView:
    """The record's documents, newest first, filtered by words of the title, category and label.

    Filtering, ordering, counting and the page are the store's queries (indexed): the page's time
    does not grow with the size of the record.
    """
    store = patient.store
    page = await store.record_page(
        RecordFilter(category=category or None, label=label or None, words=tuple(query.split())),
        limit=limit,
        offset=offset,
    )
    facets = await store.record_facets()
    shown = [document_entry(row) for row in page.documents]
    return DocumentsView(
        documents=shown,
        total=facets.total,
        matching=page.matching,
        categories=facets.categories,
        labels=facets.labels,
        authors={did: await patient.peer_name(did) for did in {d["author"] for d in shown}},
    )


def document_entry(row: AcceptedRow) -> dict[str, Any]:
    """A document of the record as the pages show it (the keys of :meth:`PatientNode.documents`)."""
    return {
        "doc": row.doc,
        "author": row.author,
        "title": row.title,
        "type": row.doc_type,
        "category": row.category,
        "labels": json.loads(row.labels) if row.labels != "[]" else [],
        "date": row.date,
        "added": row.added,
        "size": row.size,
        "hidden": bool(row.hidden),
    }


async def record_document(patient: PatientNode, doc: bytes) -> dict[str, Any] | None:
    """One document of the record (as :func:`document_entry`), or ``None`` when it is not in the record."""
    row = await patient.store.accepted_document(doc)
    return document_entry(row) if row is not None else None
