"""What several pages share: document ids in URLs, plain-language label names, the documents view."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fedrecord.node.patient import PatientNode

from .. import i18n
from ..app import LANGUAGE

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
    index = i18n.LANGUAGES.index(request.get(LANGUAGE, i18n.DEFAULT))

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
    """The record's documents, newest first, filtered by words of the title, category and label."""
    everything = await patient.documents()
    words = [w.casefold() for w in query.split()]
    matching = [
        d
        for d in everything
        if (not category or d["category"] == category)
        and (not label or label in d["labels"])
        and all(w in d["title"].casefold() for w in words)
    ]
    matching.sort(key=lambda d: (d["date"], d["doc"]), reverse=True)
    shown = matching[offset : offset + limit]
    return DocumentsView(
        documents=shown,
        total=len(everything),
        matching=len(matching),
        categories=sorted({d["category"] for d in everything}),
        labels=sorted({lab for d in everything for lab in d["labels"]}),
        authors={did: await patient.peer_name(did) for did in {d["author"] for d in shown}},
    )
