"""My record: the timeline of documents, search and filters, and one document opened or downloaded."""

from __future__ import annotations

import asyncio
from typing import BinaryIO, NamedTuple, cast

from aiohttp import web

from fedrecord.core.errors import FedrecordError

from .. import i18n
from ..app import PATIENT, render
from ..sentences import iso_day
from .common import DocumentsView, category_name, doc_id, documents_view, label_name, record_document

#: Documents per page of the timeline: a page's time is mostly its lines (issue 6: at most 3 x the time
#: of a record of 10 documents, whatever the size of the record; ``benchmarks/web.py``).
PAGE_SIZE = 25
#: The highest page number asked for that is honoured (a larger one overflows SQLite's integers).
MAX_PAGE = 10**6
#: A document larger than this (its stored size) is not shown in the page, only downloaded.
INLINE_MAX = 1 << 20
#: How long the decrypting thread waits for one piece to be written to a download before giving up.
WRITE_TIMEOUT = 300.0
#: The download's headers, set before it is sent (the ``headers`` middleware only sees it once sent).
DOWNLOAD_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; sandbox",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

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
        "record.count": ("{shown} of {total} documents", "{shown} sur {total} documents"),
        "record.count.one": ("{shown} of 1 document", "{shown} sur 1 document"),
        "record.pages": ("Pages of the record", "Pages du dossier"),
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
        page = min(MAX_PAGE, max(0, int(request.query.get("page", "0"))))
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
            date=iso_day(d["date"]),
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
    if "download" in request.query:
        return await download(request, doc)
    text: str | None = None
    if entry["size"] <= INLINE_MAX:  # a larger one is only downloaded: never whole in memory
        try:
            content = await patient.read_own(doc)
        except FedrecordError:
            return render(request, "refused.html", status=404, message_key="record.missing")
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


class _DownloadWriter:
    """The file ``PatientNode.read_own_into`` writes to, in its worker thread: each piece goes to the
    download by the event loop and the thread waits until it is written (memory stays flat, at the
    browser's pace).  The answer starts with the first piece, so a document that cannot be read at
    all still gets its error page."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.loop = asyncio.get_running_loop()
        #: Set when the request is cancelled: the thread stops at its next piece.
        self.abandoned = False

    def write(self, piece: bytes) -> int:
        if self.abandoned:
            raise ConnectionResetError("the download was abandoned")
        asyncio.run_coroutine_threadsafe(self.send(piece), self.loop).result(WRITE_TIMEOUT)
        return len(piece)

    async def send(self, piece: bytes) -> None:
        if not self.response.prepared:
            await self.response.prepare(self.request)
        await self.response.write(piece)


async def download(request: web.Request, doc: bytes) -> web.StreamResponse:
    """The document as a file, decrypted and sent piece by piece (documents go up to 4 GiB).

    Never rendered by the browser: whatever the author put in, it arrives as a file.  The length is
    not known before the end (the stored size is the ciphertext's), so it is sent chunked.  When
    decryption fails after the first piece was sent, the connection is dropped without the final
    chunk: the browser reports the download as failed, never as a complete file ([ENC-9]).
    """
    response = web.StreamResponse(
        headers={**DOWNLOAD_HEADERS, "Content-Disposition": f'attachment; filename="{doc.hex()[:16]}.bin"'}
    )
    response.enable_chunked_encoding()
    writer = _DownloadWriter(request, response)
    try:
        await request.app[PATIENT].read_own_into(doc, cast(BinaryIO, writer))
    except asyncio.CancelledError:
        writer.abandoned = True
        raise
    except FedrecordError:
        if response.prepared:
            raise  # aiohttp logs it and closes the connection mid-stream
        return render(request, "refused.html", status=404, message_key="record.missing")
    except ConnectionError:
        return response  # the browser went away: nothing more to send
    if not response.prepared:  # an empty document
        await response.prepare(request)
    await response.write_eof()
    return response


def routes(app: web.Application) -> None:
    app.router.add_get("/record", timeline)
    app.router.add_get("/record/{doc}", document)
