"""Who looked: the audit log as a readable list, filtered and paged in SQL, and whether its chain verifies (US-8).

Each page load first verifies the entries logged since the last load
(:meth:`PatientNode.verify_audit_since_last`: how far the chain verified is
kept in the node's database, so a load checks only what is new, within a time
budget; a longer backlog goes on in a background task), then reads one page
of entries, newest first by (time, seq), with keyset paging from an entry
(``before``/``after`` its seq) on indexes that end with (at, seq): a page costs
the same at entry 50,000 as at entry 50, filtered or not.  A failure is kept
and shown with its entry number until the patient asks for the whole log to be
checked again.

A batch read (one receipt for several documents, spec 15.21) is one entry:
its row names the first document, or the one the list is filtered by, and
says how many more the entry covers (one query for the page's rows).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import urlencode

from aiohttp import web

from fedrecord.node.patient import AuditStanding, PatientNode
from fedrecord.node.store import AuditFilter, AuditRow

from .. import i18n
from ..app import PATIENT, language_of, notify, redirect, render
from ..sentences import PURPOSES, long_date
from .common import doc_id

PAGE_SIZE = 25
DAY = 86_400
#: Seconds a page load spends at most verifying new entries; a longer backlog goes on in the background.
PAGE_BUDGET = 0.5
#: Seconds the background verification works between two looks at whether it is done.
BACKGROUND_BUDGET = 2.0
#: The background verification of a long backlog, one at a time per page.
VERIFYING = web.AppKey("audit.verifying", dict)
#: Held while a page load verifies and decides whether to start the background verification.
STARTING = web.AppKey("audit.starting", asyncio.Lock)

log = logging.getLogger(__name__)

i18n.register(
    {
        "audit.title": ("Who looked", "Qui a consulté"),
        "audit.intro": (
            "Each time a clinic reads one of your documents, your node writes it down here, with the clinic's "
            "signature. Newest first.",
            "Chaque fois qu'un cabinet lit l'un de vos documents, votre nœud le note ici, avec la signature du "
            "cabinet. Les plus récents d'abord.",
        ),
        "audit.ok": (
            "The log is intact as far as checked: each of its {count} entries was checked once, and the newest "
            "one is still in place as it was checked, as is each entry your devices vouched for. Each read is "
            "signed by its reader and sealed to the one before it; older entries are not read again on each "
            "visit: “Check the whole log again” does that.",
            "Le journal est intact pour ce qui a été vérifié : chacune de ses {count} entrées a été vérifiée une "
            "fois, et la plus récente est toujours en place telle qu'elle a été vérifiée, comme chaque entrée "
            "attestée par vos appareils. Chaque lecture est signée par son lecteur et scellée à la précédente ; "
            "les entrées plus anciennes ne sont pas relues à chaque visite : « Revérifier tout le journal » le "
            "fait.",
        ),
        "audit.ok.one": (
            "The log is intact as far as checked: its entry was checked, and is still in place as it was "
            "checked. Each read is signed by its reader and sealed to the one before it.",
            "Le journal est intact pour ce qui a été vérifié : son entrée a été vérifiée, et est toujours en "
            "place telle qu'elle a été vérifiée. Chaque lecture est signée par son lecteur et scellée à la "
            "précédente.",
        ),
        "audit.empty.log": (
            "Nobody has read your documents yet: the log is empty.",
            "Personne n'a encore lu vos documents : le journal est vide.",
        ),
        "audit.partial": (
            "Checking the log: {verified} of {count} entries checked so far, all intact. The check goes on by "
            "itself: reload the page in a moment.",
            "Vérification du journal : {verified} entrées sur {count} vérifiées pour l'instant, toutes intactes. "
            "La vérification continue d'elle-même : rechargez la page dans un instant.",
        ),
        "audit.broken": (
            "Warning: this log was changed after it was written. Entry number {seq} does not check out ({why}). "
            "The entries before it are intact; from entry {seq} on, the list may not show what really happened.",
            "Attention : ce journal a été modifié après avoir été écrit. L'entrée numéro {seq} n'est pas valide "
            "({why}). Les entrées qui la précèdent sont intactes ; à partir de l'entrée {seq}, la liste peut ne "
            "pas montrer ce qui s'est vraiment passé.",
        ),
        "audit.broken.unchecked": (
            "Warning: this log was changed after it was written. Entry number {seq} does not check out ({why}). "
            "{verified} entries were checked before it was found; from entry {next} on, the list may not show "
            "what really happened.",
            "Attention : ce journal a été modifié après avoir été écrit. L'entrée numéro {seq} n'est pas valide "
            "({why}). {verified} entrées avaient été vérifiées avant de le constater ; à partir de l'entrée "
            "{next}, la liste peut ne pas montrer ce qui s'est vraiment passé.",
        ),
        "audit.why.chain": (
            "it does not follow on from the entry before it",
            "elle ne fait pas suite à l'entrée précédente",
        ),
        "audit.why.signature": ("a signature does not match", "une signature ne correspond pas"),
        "audit.why.receipt": (
            "what it shows is not what the reader signed",
            "ce qu'elle montre n'est pas ce que le lecteur a signé",
        ),
        "audit.why.checkpoint": (
            "it differs from the copy your devices vouched for",
            "elle diffère de la copie attestée par vos appareils",
        ),
        "audit.why.changed": (
            "it changed or disappeared since it was last checked",
            "elle a changé ou disparu depuis sa dernière vérification",
        ),
        "audit.why.other": ("it does not verify: {code}", "elle n'est pas vérifiable : {code}"),
        "audit.recheck": ("Check the whole log again", "Revérifier tout le journal"),
        "audit.recheck.help": (
            "Each visit checks the entries added since the last one; this checks every entry again, from the first.",
            "Chaque visite vérifie les entrées ajoutées depuis la précédente ; ceci revérifie chaque entrée, "
            "depuis la première.",
        ),
        "audit.rechecking": (
            "The whole log is checked again from its first entry.",
            "Tout le journal est revérifié depuis sa première entrée.",
        ),
        "audit.filters": ("Filter the list", "Filtrer la liste"),
        "audit.reader": ("Who", "Qui"),
        "audit.reader.all": ("Everyone", "Tout le monde"),
        "audit.from": ("From (date)", "Du (date)"),
        "audit.to": ("To (date, included)", "Au (date, incluse)"),
        "audit.filter": ("Filter", "Filtrer"),
        "audit.clear": ("Show everything", "Tout afficher"),
        "audit.only.doc": ("Only reads of: {title}", "Seulement les lectures de : {title}"),
        "audit.all.docs": ("All documents", "Tous les documents"),
        "audit.bad.date": (
            "A date was not understood and is ignored: write it as 2026-03-12.",
            "Une date n'a pas été comprise et est ignorée : écrivez-la sous la forme 2026-03-12.",
        ),
        "audit.bad.doc": (
            "That document link is not valid and is ignored.",
            "Ce lien vers un document n'est pas valide et est ignoré.",
        ),
        "audit.col.when": ("When", "Quand"),
        "audit.col.who": ("Who", "Qui"),
        "audit.col.document": ("Document", "Document"),
        "audit.col.purpose": ("For", "Pour"),
        "audit.col.entry": ("Entry", "Entrée"),
        "audit.deleted.doc": ("a deleted document", "un document supprimé"),
        # A batch read (several documents with one receipt, 15.21): one entry, its first document named.
        "audit.more.one": ("and 1 more document", "et 1 autre document"),
        "audit.more": ("and {count} more documents", "et {count} autres documents"),
        "audit.reads.of": ("Reads of “{title}”", "Lectures de « {title} »"),
        "audit.reads.of.deleted": ("Reads of this deleted document", "Lectures de ce document supprimé"),
        "audit.unverified": ("not checked", "non vérifiée"),
        "audit.none": ("No read matches these filters.", "Aucune lecture ne correspond à ces filtres."),
        "audit.newer": ("Newer entries", "Entrées plus récentes"),
        "audit.older": ("Older entries", "Entrées plus anciennes"),
        "audit.pages": ("Pages of the log", "Pages du journal"),
    }
)

#: What :meth:`PatientNode.verify_audit_since_last` found, in the page's words.
WHY = {
    "the hash chain is broken": "audit.why.chain",
    "bad-signature": "audit.why.signature",
    "bad-key": "audit.why.signature",
    "the entry differs from its receipt": "audit.why.receipt",
    "differs from its checkpoint": "audit.why.checkpoint",
    "differs from when it was verified": "audit.why.changed",
}


class Entry(NamedTuple):
    """One read, as the list shows it (all its words made before the template: a page has many rows)."""

    seq: int
    when: str
    who: str
    doc: str
    #: The document's title, or "a deleted document".
    title: str
    deleted: bool
    #: "and 24 more documents" for a batch read, else "".
    more: str
    #: The link text that filters the list to this document ("" when the list is filtered already).
    reads_of: str
    purpose: str
    #: "not checked" for an entry the chain's verification has not reached (or broke at), else "".
    unchecked: str


def _day(text: str) -> int | None:
    """The start (UTC) of the day written ``YYYY-MM-DD``, or None."""
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%d"))
    except ValueError:
        return None


def _seq(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    # Beyond SQLite's integers no entry exists: treated as no position, as a negative one is.
    return value if 0 <= value < 1 << 63 else None


def _more(others: int, translate: Callable[..., str]) -> str:
    """For an entry covering ``others`` documents besides the one it names: "and 24 more documents", or ""."""
    if others < 1:
        return ""
    return translate("audit.more.one") if others == 1 else translate("audit.more", count=others)


def _status(standing: AuditStanding, translate: Any) -> tuple[str, str]:
    """(kind, sentence) for the verification banner: kind is "ok", "partial", "broken" or "empty"."""
    if standing.broken is not None:
        key = WHY.get(standing.problem, "audit.why.other")
        why = translate(key, code=standing.problem) if key == "audit.why.other" else translate(key)
        if standing.verified < standing.broken - 1:  # a checkpoint past what the chain's walk reached
            return "broken", translate(
                "audit.broken.unchecked",
                seq=standing.broken,
                why=why,
                verified=standing.verified,
                next=standing.verified + 1,
            )
        return "broken", translate("audit.broken", seq=standing.broken, why=why)
    if standing.total == 0:
        return "empty", translate("audit.empty.log")
    if not standing.complete:
        return "partial", translate("audit.partial", verified=standing.verified, count=standing.total)
    if standing.total == 1:
        return "ok", translate("audit.ok.one")
    return "ok", translate("audit.ok", count=standing.total)


async def _standing(app: web.Application, patient: PatientNode) -> AuditStanding:
    """Verify what is new, for :data:`PAGE_BUDGET` seconds; a backlog left over goes on in a background task.

    Page loads take turns (:data:`STARTING`), so two at once do not both start one.
    """
    tasks: dict[str, asyncio.Task[None]] = app[VERIFYING]
    async with app[STARTING]:
        running = tasks.get("task")
        if running is not None and not running.done():
            return await patient.verify_audit_since_last(budget=0)
        standing = await patient.verify_audit_since_last(budget=PAGE_BUDGET)
        if standing.broken is None and not standing.complete:
            tasks["task"] = asyncio.create_task(_verify_the_rest(patient))
        return standing


async def _verify_the_rest(patient: PatientNode) -> None:
    try:
        while True:
            standing = await patient.verify_audit_since_last(budget=BACKGROUND_BUDGET)
            if standing.broken is not None or standing.complete:
                return
    except Exception:  # the node closing under it, say: the next page load starts again
        log.exception("verifying the audit log in the background")


async def _stop_verifying(app: web.Application) -> None:
    task = app[VERIFYING].get("task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def audit_page(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    store = patient.store
    language = language_of(request)
    translate = i18n.translator(language)
    standing = await _standing(request.app, patient)

    query = request.query
    reader = query.get("reader", "").strip()
    doc_text = query.get("doc", "").strip()
    doc = doc_id(doc_text) if doc_text else None
    since_text, until_text = query.get("from", "").strip(), query.get("to", "").strip()
    since = _day(since_text) if since_text else None
    until_day = _day(until_text) if until_text else None
    bad_date = bool((since_text and since is None) or (until_text and until_day is None))
    where = AuditFilter(
        reader=reader or None,
        doc=doc,
        since=since,
        until=until_day + DAY if until_day is not None else None,
    )
    before, after = _seq(query.get("before")), _seq(query.get("after"))

    rows: list[AuditRow]
    if after is not None:
        rows = await store.audit_page(where, after=after, limit=PAGE_SIZE + 1)
        has_newer = len(rows) > PAGE_SIZE
        rows = rows[1:] if has_newer else rows
        if not rows:  # past the newest: the newest page
            after = None
    if after is None:
        rows = await store.audit_page(where, before=before, limit=PAGE_SIZE + 1)
        has_older = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        has_newer = (
            bool(rows)
            and before is not None
            and bool(await store.audit_page(where, after=rows[0].seq, limit=1))
        )
    else:
        has_older = bool(await store.audit_page(where, before=rows[-1].seq, limit=1))

    titles = await store.document_titles([row.doc for row in rows] + ([doc] if doc else []))
    covers = await store.audit_doc_counts([row.seq for row in rows])
    names = {did: await patient.peer_name(did) for did in {row.reader for row in rows}}
    purposes = {code: pair[i18n.LANGUAGES.index(language)] for code, pair in PURPOSES.items()}
    deleted_doc, unchecked = translate("audit.deleted.doc"), translate("audit.unverified")
    days: dict[int, str] = {}
    entries = []
    for row in rows:
        # Filtered by a document, each entry is named by it, even one where it is not the batch's first.
        shown = doc if doc is not None else row.doc
        title = titles.get(shown)
        day = days.get(row.at // DAY) or days.setdefault(row.at // DAY, long_date(row.at, language))
        entries.append(
            Entry(
                seq=row.seq,
                when=f"{day}, {row.at % DAY // 3600:02d}:{row.at % 3600 // 60:02d} UTC",
                who=names[row.reader],
                doc=shown.hex(),
                title=title if title is not None else deleted_doc,
                deleted=title is None,
                more=_more(covers.get(row.seq, 1) - 1, translate),
                reads_of=""
                if doc is not None
                else translate("audit.reads.of", title=title)
                if title is not None
                else translate("audit.reads.of.deleted"),
                purpose=purposes.get(row.purpose, row.purpose),
                unchecked=unchecked if row.seq > standing.verified else "",
            )
        )
    readers = sorted(
        [(did, await patient.peer_name(did)) for did in await store.audit_readers()],
        key=lambda r: r[1].casefold(),
    )
    kept = {"reader": reader, "doc": doc.hex() if doc else "", "from": since_text, "to": until_text}

    def link(**changes: Any) -> str:
        params = {k: v for k, v in {**kept, **changes}.items() if v not in ("", None)}
        return "/audit" + ("?" + urlencode(params) if params else "")

    kind, sentence = _status(standing, translate)
    return render(
        request,
        "audit.html",
        banner_kind=kind,
        banner=sentence,
        entries=entries,
        readers=readers,
        reader=reader,
        doc=doc.hex() if doc else "",
        doc_title=titles.get(doc) if doc else None,
        since=since_text,
        until=until_text,
        bad_date=bad_date,
        bad_doc=bool(doc_text and doc is None),
        newer=link(after=entries[0].seq) if entries and has_newer else None,
        older=link(before=entries[-1].seq) if entries and has_older else None,
        all_docs=link(doc=""),
        filtered=any(kept.values()),
    )


async def recheck(request: web.Request) -> web.Response:
    """Forget how far the chain verified: the next load checks every entry from the first."""
    await _stop_verifying(request.app)  # its next step would keep a mark from before
    await request.app[PATIENT].forget_audit_verification()
    notify(request, "audit.rechecking")
    raise redirect("/audit")


def routes(app: web.Application) -> None:
    app[VERIFYING] = {}
    app[STARTING] = asyncio.Lock()
    app.on_cleanup.append(_stop_verifying)
    app.router.add_get("/audit", audit_page)
    app.router.add_post("/audit/verify", recheck)
