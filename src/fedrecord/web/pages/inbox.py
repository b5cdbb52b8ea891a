"""Inbox: deposits waiting for the patient's decision, who would see each one, labels, accept or reject (US-3, US-6)."""

from __future__ import annotations

import time

from aiohttp import web

from fedrecord.core.errors import FedrecordError
from fedrecord.node.patient import InboxItem, PatientNode

from .. import i18n
from ..app import PATIENT, language_of, notify, redirect, render
from ..sentences import Vocabulary, grant_summary
from .common import CATEGORIES, LABELS, category_name, doc_id, label_name

#: Deposits shown on one page; the rest wait for the first ones to be decided.
INBOX_PAGE = 50

i18n.register(
    {
        "inbox.title": ("Inbox", "Boîte de réception"),
        "inbox.intro": (
            "Documents your clinics sent you. They join your record only when you accept them.",
            "Les documents que vos cabinets vous ont envoyés. Ils n'entrent dans votre dossier que si vous les acceptez.",
        ),
        "inbox.empty": ("Nothing is waiting in your inbox.", "Rien n'attend dans votre boîte de réception."),
        "inbox.count": ("{count} documents waiting.", "{count} documents en attente."),
        "inbox.count.one": ("1 document waiting.", "1 document en attente."),
        "inbox.more": (
            "Only the first {shown} are shown; decide on these to see the others.",
            "Seuls les {shown} premiers sont affichés ; décidez pour ceux-ci afin de voir les autres.",
        ),
        "inbox.from": ("From", "De"),
        "inbox.type": ("Type", "Type"),
        "inbox.date": ("Date", "Date"),
        "inbox.labels": ("Labels", "Étiquettes"),
        "inbox.labels.none": ("none", "aucune"),
        "inbox.seen": (
            "If you accept it now, it can also be read by:",
            "Si vous l'acceptez maintenant, il pourra aussi être lu par :",
        ),
        "inbox.seen.nobody": (
            "If you accept it now, nobody else can read it: only you.",
            "Si vous l'acceptez maintenant, personne d'autre ne pourra le lire : vous seul.",
        ),
        "inbox.add.legend": (
            "Add labels before accepting (optional)",
            "Ajouter des étiquettes avant d'accepter (facultatif)",
        ),
        "inbox.add.help": (
            "Labels let you keep this document from the accesses that hide them.",
            "Les étiquettes vous permettent de cacher ce document aux accès qui les masquent.",
        ),
        "inbox.accept": ("Accept into my record", "Accepter dans mon dossier"),
        "inbox.reject": ("Reject", "Refuser"),
        "inbox.reject.help": (
            "Rejecting destroys this document on your node, and {sender} will be told you refused it.",
            "Refuser détruit ce document sur votre nœud, et {sender} sera informé de votre refus.",
        ),
        "inbox.accepted": (
            "“{title}” joined your record. {seen}",
            "« {title} » est entré dans votre dossier. {seen}",
        ),
        "inbox.accepted.seen": ("It can be read by: {who}.", "Il peut être lu par : {who}."),
        "inbox.accepted.nobody": ("Only you can read it.", "Vous seul pouvez le lire."),
        "inbox.rejected": (
            "“{title}” was rejected: it is destroyed on your node, and {sender} will be told.",
            "« {title} » a été refusé : il est détruit sur votre nœud, et {sender} sera informé.",
        ),
        "inbox.gone": (
            "This document is no longer in your inbox: it was already accepted or rejected.",
            "Ce document n'est plus dans votre boîte de réception : il a déjà été accepté ou refusé.",
        ),
        "inbox.bad.label": (
            "That label is not one this page knows. Nothing was changed.",
            "Cette étiquette n'est pas connue de cette page. Rien n'a été modifié.",
        ),
        "inbox.failed": (
            "Your node could not do this ({code}). Nothing was changed.",
            "Votre nœud n'a pas pu le faire ({code}). Rien n'a été modifié.",
        ),
    }
)

VOCABULARY = Vocabulary(labels=LABELS, categories=CATEGORIES)


async def _who_would_see(patient: PatientNode, doc: bytes, *, language: str, now: int) -> list[str]:
    return [
        grant_summary(
            grant.record,
            name=await patient.peer_name(grant.record.audience),
            language=language,
            vocabulary=VOCABULARY,
        )
        for grant in await patient.grants_that_would_see(doc, now=now)
    ]


async def inbox_page(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    language = language_of(request)
    now = int(time.time())
    items = await patient.inbox()
    shown = items[:INBOX_PAGE]
    seen = {item.doc: await _who_would_see(patient, item.doc, language=language, now=now) for item in shown}
    return render(
        request,
        "inbox.html",
        items=shown,
        total=len(items),
        seen=seen,
        all_labels=list(LABELS),
        label_name=label_name(request),
        category_name=category_name(request),
    )


async def _waiting(patient: PatientNode, text: str) -> InboxItem | None:
    doc = doc_id(text)
    if doc is None:
        return None
    return next((item for item in await patient.inbox() if item.doc == doc), None)


async def accept(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    form = await request.post()
    labels = [str(value) for value in form.getall("label", [])]
    if any(code not in LABELS for code in labels):
        notify(request, "inbox.bad.label")
        raise redirect("/inbox")
    item = await _waiting(patient, request.match_info["doc"])
    if item is None:
        notify(request, "inbox.gone")
        raise redirect("/inbox")
    now = int(time.time())
    try:
        await patient.accept(item.doc, labels=labels, now=now)
    except FedrecordError as error:
        notify(request, "inbox.gone" if error.code == "not-found" else "inbox.failed", code=str(error.code))
        raise redirect("/inbox") from None
    language = language_of(request)
    who = await _who_would_see(patient, item.doc, language=language, now=now)
    seen = (
        i18n.translator(language)("inbox.accepted.seen", who="; ".join(who))
        if who
        else i18n.translator(language)("inbox.accepted.nobody")
    )
    notify(request, "inbox.accepted", title=item.title, seen=seen)
    raise redirect("/inbox")


async def reject(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    item = await _waiting(patient, request.match_info["doc"])
    if item is None:
        notify(request, "inbox.gone")
        raise redirect("/inbox")
    try:
        await patient.reject(item.doc, now=int(time.time()))
    except FedrecordError as error:
        notify(request, "inbox.gone" if error.code == "not-found" else "inbox.failed", code=str(error.code))
        raise redirect("/inbox") from None
    notify(request, "inbox.rejected", title=item.title, sender=item.author_name)
    raise redirect("/inbox")


def routes(app: web.Application) -> None:
    app.router.add_get("/inbox", inbox_page)
    app.router.add_post("/inbox/{doc}/accept", accept)
    app.router.add_post("/inbox/{doc}/reject", reject)
