"""My record: the timeline of documents, search and filters, and one document opened or downloaded."""

from __future__ import annotations

import time
from typing import NamedTuple

from aiohttp import web

from fedrecord.core.errors import FedrecordError

from .. import i18n
from ..app import PATIENT, render
from .common import DocumentsView, category_name, doc_id, documents_view, label_name, record_document

#: Documents per page of the timeline: a page's time is mostly its lines (issue 6: at most 3 x the time
#: of a record of 10 documents, whatever the size of the record; ``benchmarks/web.py``).
PAGE_SIZE = 25

i18n.register(
    {
        "record.title": ("My record", "Mon dossier"),
        "record.search": ("Search", "Rechercher"),
        "record.search.label": ("Words in the title", "Mots du titre"),
        "record.category": ("Category", "Catégorie"),
        "record.category.all": ("All categories", "Toutes les catégories"),
        "record.label": ("Label", "Étiquette"),
        "record.label.all": ("All labels", "Toutes les étiquettes"),
        "record.filter": ("Filter", "Filtrer"),
        "record.empty": ("No document matches.", "Aucun document ne correspond."),
        "record.count": ("{shown} of {total} documents", "{shown} documents sur {total}"),
        "record.col.date": ("Date", "Date"),
        "record.col.title": ("Title", "Titre"),
        "record.col.type": ("Type", "Type"),
        "record.col.author": ("From", "De"),
        "record.col.labels": ("Labels", "Étiquettes"),
        "record.hidden": ("hidden", "masqué"),
        "record.open": ("Open", "Ouvrir"),
        "record.download": ("Download", "Télécharger"),
        "record.previous": ("Previous page", "Page précédente"),
        "record.next": ("Next page", "Page suivante"),
        "record.missing": ("This document is not in your record.", "Ce document n'est pas dans votre dossier."),
        "document.content": ("Content", "Contenu"),
        "document.binary": (
            "This document is not text: download it to open it.",
            "Ce document n'est pas du texte : téléchargez-le pour l'ouvrir.",
        ),
    }
)


async def timeline(request: web.Request) -> web.Response:
    query = request.query.get("q", "").strip()
    category = request.query.get("category", "")
    label = request.query.get("label", "")
    try:
        page = max(0, int(request.query.get("page", "0")))
    except ValueError:
        page = 0
    view = await documents_view(
        request.app[PATIENT], query=query, category=category, label=label, limit=PAGE_SIZE, offset=page * PAGE_SIZE
    )
    return render(
        request,
        "record.html",
        view=view,
        rows=timeline_rows(view, request),
        query=query,
        category=category,
        label=label,
        page=page,
        page_size=PAGE_SIZE,
        label_name=label_name(request),
        category_name=category_name(request),
    )


class TimelineRow(NamedTuple):
    """One line of the timeline, every text ready (the template only places them)."""

    href: str
    title: str
    hidden: bool
    date: str
    category: str
    author: str
    labels: list[str]


def timeline_rows(view: DocumentsView, request: web.Request) -> list[TimelineRow]:
    category, label = category_name(request), label_name(request)
    return [
        TimelineRow(
            href=f"/record/{d['doc'].hex()}",
            title=d["title"],
            hidden=d["hidden"],
            date=time.strftime("%Y-%m-%d", time.gmtime(d["date"])) if d["date"] else "",
            category=category(d["category"]),
            author=view.authors[d["author"]],
            labels=[label(code) for code in d["labels"]],
        )
        for d in view.documents
    ]


async def document(request: web.Request) -> web.StreamResponse:
    """One document, decrypted by the node: shown as text in the page, or sent as a download."""
    patient = request.app[PATIENT]
    doc = doc_id(request.match_info["doc"])
    entry = await record_document(patient, doc) if doc else None
    if entry is None or doc is None:
        return render(request, "refused.html", status=404, message_key="record.missing")
    try:
        content = await patient.read_own(doc)
    except FedrecordError:
        return render(request, "refused.html", status=404, message_key="record.missing")
    if "download" in request.query:
        # Never rendered by the browser: whatever the author put in, it arrives as a file.
        return web.Response(
            body=content,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{doc.hex()[:16]}.bin"'},
        )
    text: str | None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return render(
        request,
        "document_actions.html",
        entry=entry,
        text=text,
        label_name=label_name(request),
        category_name=category_name(request),
    )


def routes(app: web.Application) -> None:
    app.router.add_get("/record", timeline)
    app.router.add_get("/record/{doc}", document)
