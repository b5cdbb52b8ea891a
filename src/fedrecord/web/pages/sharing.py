"""Sharing: who can see what (a sentence per grant), grant, hide privately, revoke (US-4, US-5, US-6, US-9)."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from fedrecord.core import Action, Grant, PrivateRestriction, Revocation, RevocationSet, Scope, Signed
from fedrecord.core.errors import FedrecordError
from fedrecord.core.identity import public_key_from_did
from fedrecord.node.patient import GivenGrant, PatientNode
from fedrecord.node.store import RecordFilter
from fedrecord.node.sync import is_device_grant

from .. import i18n
from ..app import PATIENT, language_of, notify, redirect, render
from ..sentences import (
    PURPOSES,
    Hidden,
    Vocabulary,
    ended_sentence,
    grant_details,
    grant_sentence,
    hidden_from,
    iso_day,
)
from .common import CATEGORIES, LABELS, category_name, doc_id, document_entry, label_name, record_document

DAY = 86_400
#: The grant form's default length, and the longest it offers.
DEFAULT_DAYS = 90
MAX_DAYS = 5 * 366
#: Documents offered in the grant form's list (newest first); others can be shared by category or label.
DOCUMENT_CHOICES = 100
#: "Dated" choices of the grant form: days back, or "" for any date.
SINCE_CHOICES = ("", "365", "1826")

i18n.register(
    {
        "sharing.title": ("Sharing", "Partage"),
        "sharing.intro": (
            "Who can see what in your record. Only you see this page; what you hide is never shown to them.",
            "Qui peut voir quoi dans votre dossier. Vous seul voyez cette page ; ce que vous cachez ne leur est jamais montré.",
        ),
        "sharing.readers": ("Who can read your record", "Qui peut lire votre dossier"),
        "sharing.readers.none": (
            "Nobody can read your record but you.",
            "Personne d'autre que vous ne peut lire votre dossier.",
        ),
        "sharing.revoke": ("Revoke this access", "Révoquer cet accès"),
        "sharing.given.by": ("Given by your device {device}.", "Donné par votre appareil {device}."),
        "sharing.revoke.effect": (
            "If you revoke it, {name} can no longer read these documents, and its node is told to destroy the copies it holds.",
            "Si vous le révoquez, {name} ne pourra plus lire ces documents, et son nœud devra détruire les copies qu'il détient.",
        ),
        "sharing.revoke.effect.delegated": (
            "Anyone it passed this access on to loses it too.",
            "Ceux à qui il a transmis cet accès le perdent aussi.",
        ),
        "sharing.hide.summary": ("Hide more from this access", "Cacher davantage à cet accès"),
        "sharing.hide.legend": (
            "Keep documents with these labels hidden from {name}",
            "Cacher à {name} les documents portant ces étiquettes",
        ),
        "sharing.hide.help": (
            "Privately: {name} is never told that something is hidden.",
            "En privé : {name} n'apprend jamais que quelque chose lui est caché.",
        ),
        "sharing.hide.submit": ("Hide", "Cacher"),
        "sharing.senders": ("Who can send you documents", "Qui peut vous envoyer des documents"),
        "sharing.senders.none": (
            "No clinic is connected yet: connect one to receive its documents.",
            "Aucun cabinet n'est encore connecté : connectez-en un pour recevoir ses documents.",
        ),
        "sharing.stop.effect": (
            "If you revoke it, {name} can no longer send you documents. Documents already in your record stay.",
            "Si vous le révoquez, {name} ne pourra plus vous envoyer de documents. Les documents déjà dans votre dossier restent.",
        ),
        "sharing.devices": (
            "Your own devices can also read your whole record: see My devices.",
            "Vos propres appareils peuvent aussi lire tout votre dossier : voir Mes appareils.",
        ),
        "sharing.ended": ("Accesses that have ended ({count})", "Accès terminés ({count})"),
        "sharing.form": ("Give access", "Donner un accès"),
        "sharing.form.who": ("Who", "À qui"),
        "sharing.form.peer": ("A connected clinic", "Un cabinet connecté"),
        "sharing.form.peer.choose": ("Choose…", "Choisir…"),
        "sharing.form.did": (
            "Or paste its identifier (starts with did:key:)",
            "Ou collez son identifiant (commence par did:key:)",
        ),
        "sharing.form.what": ("What it can read", "Ce qu'il peut lire"),
        "sharing.form.whole": ("My whole record", "Tout mon dossier"),
        "sharing.form.categories": ("These kinds of documents", "Ces types de documents"),
        "sharing.form.labels": ("Documents with these labels", "Les documents portant ces étiquettes"),
        "sharing.form.docs": ("These documents (optional)", "Ces documents (facultatif)"),
        "sharing.form.docs.help": (
            "Hold Ctrl (or Cmd) to choose several. Your {count} newest documents are listed.",
            "Maintenez Ctrl (ou Cmd) pour en choisir plusieurs. Vos {count} documents les plus récents sont listés.",
        ),
        "sharing.form.since": ("Dated", "Datés"),
        "sharing.form.since.any": ("Any date", "N'importe quand"),
        "sharing.form.since.365": ("In the last 12 months", "Des 12 derniers mois"),
        "sharing.form.since.1826": ("In the last 5 years", "Des 5 dernières années"),
        "sharing.form.until": ("Until", "Jusqu'au"),
        "sharing.form.purpose": ("Purpose", "Finalité"),
        "sharing.form.delegate": (
            "It may pass a narrower access on to another clinic (for example a specialist)",
            "Il peut transmettre un accès plus restreint à un autre cabinet (par exemple un spécialiste)",
        ),
        "sharing.form.hide": (
            "Keep hidden from this access (privately)",
            "Cacher à cet accès (en privé)",
        ),
        "sharing.form.submit": ("Give access", "Donner l'accès"),
        "sharing.granted": ("Done. {sentence}", "C'est fait. {sentence}"),
        "sharing.revoked": (
            "Revoked: {name} can no longer read these documents, and its node is told to destroy its copies.",
            "Révoqué : {name} ne peut plus lire ces documents, et son nœud doit détruire ses copies.",
        ),
        "sharing.stopped": (
            "Revoked: {name} can no longer send you documents.",
            "Révoqué : {name} ne peut plus vous envoyer de documents.",
        ),
        "sharing.hidden": ("Done. {sentence}", "C'est fait. {sentence}"),
        "sharing.gone": (
            "This access has already ended. Nothing was changed.",
            "Cet accès est déjà terminé. Rien n'a été modifié.",
        ),
        "sharing.error.who": (
            "Choose a connected clinic, or paste a valid identifier starting with did:key:. Nothing was shared.",
            "Choisissez un cabinet connecté, ou collez un identifiant valable commençant par did:key:. Rien n'a été partagé.",
        ),
        "sharing.error.self": (
            "That identifier is your own node. Nothing was shared.",
            "Cet identifiant est celui de votre propre nœud. Rien n'a été partagé.",
        ),
        "sharing.error.what": (
            "Choose what it can read: your whole record, kinds of documents, labels or documents. Nothing was shared.",
            "Choisissez ce qu'il peut lire : tout votre dossier, des types de documents, des étiquettes ou des documents. Rien n'a été partagé.",
        ),
        "sharing.error.until": (
            "Choose an end date between tomorrow and five years from now. Nothing was shared.",
            "Choisissez une date de fin entre demain et dans cinq ans. Rien n'a été partagé.",
        ),
        "sharing.error.choice": (
            "One of the choices is not one this page offers. Nothing was changed.",
            "Un des choix n'est pas proposé par cette page. Rien n'a été modifié.",
        ),
        "sharing.error.hide": (
            "Choose at least one label to hide. Nothing was changed.",
            "Choisissez au moins une étiquette à cacher. Rien n'a été modifié.",
        ),
        "sharing.failed": (
            "Your node could not do this ({code}). Nothing was changed.",
            "Votre nœud n'a pas pu le faire ({code}). Rien n'a été modifié.",
        ),
    }
)


@dataclass(frozen=True)
class GrantView:
    """One grant as the page shows it."""

    id: bytes
    name: str
    sentence: str
    details: str
    delegable: bool
    by: str | None = None
    """The name of the device that gave it ([API-48]); None when the patient did."""


def _is_reader(grant: Grant) -> bool:
    return Action.READ.value in grant.actions


async def _restrictions(patient: PatientNode) -> list[PrivateRestriction]:
    # The patient's own restrictions, as the CLI's `grants` reads them.
    return [r.record for r in await patient.store.records(PrivateRestriction, signer=patient.home.did)]


async def _revocations(patient: PatientNode) -> RevocationSet:
    return RevocationSet.from_records(await patient.store.records(Revocation))


def _is_device(given: GivenGrant) -> bool:
    """A device grant of the patient (its devices have their own page), not a grant a device gave."""
    return given.device is None and is_device_grant(given.grant.record)


def _hidden(given: GivenGrant, restrictions: list[PrivateRestriction]) -> Hidden:
    """What the patient's restrictions hide from a grant: those naming it or its device grant, or their audiences."""
    above = [(given.device.id, given.device.record)] if given.device is not None else []
    return hidden_from(given.grant.id, given.grant.record, restrictions, above=above)


async def _vocabulary(patient: PatientNode, grants: list[Signed[Grant]]) -> Vocabulary:
    named = {doc for g in grants for doc in (g.record.scope.ids or ())}
    # One indexed read per document a grant names (never the whole record: issue 6, scale).
    titles = {
        doc: entry["title"] for doc in named if (entry := await record_document(patient, doc)) is not None
    }
    return Vocabulary(labels=LABELS, categories=CATEGORIES, titles=titles)


async def sentence_for(patient: PatientNode, given: GivenGrant, *, language: str) -> str:
    """The sentence of one live grant, with the private restrictions that apply to it now."""
    grant = given.grant
    return grant_sentence(
        grant.record,
        name=await patient.peer_name(grant.record.audience),
        hidden=_hidden(given, await _restrictions(patient)),
        language=language,
        vocabulary=await _vocabulary(patient, [grant]),
    )


async def _peers(patient: PatientNode, grants: list[Signed[Grant]]) -> list[tuple[str, str]]:
    """Connected clinics and other peers the patient granted something, as (did, name), by name."""
    dids = {g.record.audience for g in grants if not is_device_grant(g.record)}
    return sorted(
        [(did, await patient.peer_name(did)) for did in dids], key=lambda p: (p[1].casefold(), p[0])
    )


class DocumentChoice(NamedTuple):
    """A document offered in the grant form, its texts ready (the form lists up to 100)."""

    value: str
    text: str
    selected: bool


def _choice(entry: dict[str, Any], preselected: set[str]) -> DocumentChoice:
    value = entry["doc"].hex()
    day = iso_day(entry["date"])
    return DocumentChoice(value=value, text=f"{entry['title']} ({day})", selected=value in preselected)


async def sharing_page(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    language = language_of(request)
    now = int(time.time())
    # The patient's grants and those its devices gave ([API-48]): the patient sees and may revoke both.
    given_grants = await patient.given_grants()
    grants = [given.grant for given in given_grants]
    revocations = await _revocations(patient)
    restrictions = await _restrictions(patient)
    vocabulary = await _vocabulary(patient, grants)
    readers: list[GrantView] = []
    senders: list[GrantView] = []
    ended: list[str] = []
    devices = 0
    for given in sorted(given_grants, key=lambda g: (-g.grant.record.iat, g.grant.id)):
        grant, record = given.grant, given.grant.record
        name = await patient.peer_name(record.audience)
        if not given.live(revocations, now=now):
            ended.append(
                ended_sentence(
                    record,
                    name=name,
                    revoked=given.revoked(revocations),
                    language=language,
                    vocabulary=vocabulary,
                )
            )
            continue
        if _is_device(given):
            devices += 1
            continue
        view = GrantView(
            id=grant.id,
            name=name,
            sentence=grant_sentence(
                record,
                name=name,
                hidden=_hidden(given, restrictions),
                language=language,
                vocabulary=vocabulary,
            ),
            details=grant_details(record, language=language),
            delegable=Action.DELEGATE.value in record.actions,
            by=await patient.peer_name(given.device.record.audience) if given.device is not None else None,
        )
        (readers if _is_reader(record) else senders).append(view)
    # The newest documents, and those the link preselects: one page of the store's indexed query.
    newest = await patient.store.record_page(RecordFilter(), limit=DOCUMENT_CHOICES, offset=0)
    documents = [document_entry(row) for row in newest.documents]
    preselected = {str(v).lower() for v in request.query.getall("doc", [])}
    shown = {d["doc"].hex() for d in documents}
    offered = documents + [
        entry
        for text in sorted(preselected - shown)
        if (doc := doc_id(text)) is not None and (entry := await record_document(patient, doc)) is not None
    ]
    today = datetime.datetime.fromtimestamp(now, datetime.UTC).date()
    return render(
        request,
        "sharing.html",
        readers=readers,
        senders=senders,
        ended=ended,
        devices=devices,
        peers=await _peers(patient, [given.grant for given in given_grants if given.device is None]),
        documents=[_choice(d, preselected) for d in offered],
        document_count=min(len(documents), DOCUMENT_CHOICES),
        preselected=preselected,
        labels=list(LABELS),
        categories=list(CATEGORIES),
        purposes=list(PURPOSES),
        purpose_name=lambda p: PURPOSES[p][i18n.LANGUAGES.index(language)],
        since_choices=SINCE_CHOICES,
        default_until=(today + datetime.timedelta(days=DEFAULT_DAYS)).isoformat(),
        min_until=(today + datetime.timedelta(days=1)).isoformat(),
        max_until=(today + datetime.timedelta(days=MAX_DAYS)).isoformat(),
        label_name=label_name(request),
        category_name=category_name(request),
    )


class FormRefused(Exception):
    """A grant form that cannot be granted: ``key`` names the message."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _audience(form: Any, own: str) -> str:
    pasted = str(form.get("did", "")).strip()
    chosen = pasted or str(form.get("peer", "")).strip()
    try:
        public_key_from_did(chosen)
    except FedrecordError:
        raise FormRefused("sharing.error.who") from None
    if chosen == own:
        raise FormRefused("sharing.error.self")
    return chosen


def _days_until(text: str, now: int) -> int:
    try:
        end = datetime.date.fromisoformat(text.strip())
    except ValueError:
        raise FormRefused("sharing.error.until") from None
    days = (end - datetime.datetime.fromtimestamp(now, datetime.UTC).date()).days
    if not 1 <= days <= MAX_DAYS:
        raise FormRefused("sharing.error.until")
    return days


def _subset(values: list[str], allowed: Any) -> tuple[str, ...]:
    if any(v not in allowed for v in values):
        raise FormRefused("sharing.error.choice")
    return tuple(sorted(set(values)))


async def _grant_from_form(patient: PatientNode, form: Any, now: int) -> dict[str, Any]:
    """The arguments of :meth:`PatientNode.grant` for the form, as the CLI's ``grant`` builds them.

    Raises:
        FormRefused: an answer the page cannot grant.
    """
    audience = _audience(form, patient.home.did)
    categories = _subset([str(v) for v in form.getall("category", [])], CATEGORIES)
    labels = _subset([str(v) for v in form.getall("label", [])], LABELS)
    hide = _subset([str(v) for v in form.getall("hide", [])], LABELS)
    since_choice = str(form.get("since", ""))
    if since_choice not in SINCE_CHOICES:
        raise FormRefused("sharing.error.choice")
    purpose = str(form.get("purpose", ""))
    if purpose not in PURPOSES:
        raise FormRefused("sharing.error.choice")
    docs: list[bytes] = []
    if form.getall("doc", []):
        for text in form.getall("doc", []):
            doc = doc_id(str(text))
            if doc is None or await record_document(patient, doc) is None:
                raise FormRefused("sharing.error.choice")
            docs.append(doc)
    whole = form.get("whole") == "1"
    if not (whole or categories or labels or docs):
        raise FormRefused("sharing.error.what")
    days = _days_until(str(form.get("until", "")), now)
    # As `fedrecord grant`, except that a date alone never widens a choice of documents to the whole
    # record: documents chosen by id select nothing else unless the whole record, kinds or labels are ticked.
    select = bool(whole or categories or labels)
    scope = Scope(
        ids=tuple(sorted(set(docs))) or None,
        categories=categories or None,
        labels=labels or None,
        since=now - int(since_choice) * DAY if since_choice and select else None,
        past=select,
        future=select,
    )
    actions = ("delegate", "read") if form.get("delegate") == "1" else ("read",)
    return {
        "audience": audience,
        "scope": scope,
        "actions": actions,
        "purpose": purpose,
        "days": days,
        "hide_labels": hide,
    }


async def grant(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    form = await request.post()
    now = int(time.time())
    try:
        arguments = await _grant_from_form(patient, form, now)
    except FormRefused as refused:
        notify(request, refused.key)
        raise redirect("/sharing") from None
    try:
        issued = await patient.grant(now=now, **arguments)
    except FedrecordError as error:
        notify(request, "sharing.failed", code=str(error.code))
        raise redirect("/sharing") from None
    sentence = await sentence_for(patient, GivenGrant(issued), language=language_of(request))
    notify(request, "sharing.granted", sentence=sentence)
    raise redirect("/sharing")


async def _live_grant(patient: PatientNode, text: str) -> GivenGrant | None:
    """A live grant the page lists, the patient's own or one a device gave; None for any other id."""
    wanted = doc_id(text)  # grant ids are 32-byte ids written in hex, like documents'
    if wanted is None:
        return None
    live = await patient.live_given_grants(now=int(time.time()))
    return next((given for given in live if given.grant.id == wanted and not _is_device(given)), None)


async def revoke(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    issued = await _live_grant(patient, request.match_info["grant"])
    if issued is None:
        notify(request, "sharing.gone")
        raise redirect("/sharing")
    try:
        await patient.revoke(issued.grant.id, now=int(time.time()))
    except FedrecordError as error:
        notify(request, "sharing.failed", code=str(error.code))
        raise redirect("/sharing") from None
    record = issued.grant.record
    name = await patient.peer_name(record.audience)
    notify(request, "sharing.revoked" if _is_reader(record) else "sharing.stopped", name=name)
    raise redirect("/sharing")


async def hide(request: web.Request) -> web.Response:
    """A private restriction on one live read grant: documents with these labels are kept from it."""
    patient = request.app[PATIENT]
    form = await request.post()
    issued = await _live_grant(patient, request.match_info["grant"])
    if issued is None or not _is_reader(issued.grant.record):
        notify(request, "sharing.gone")
        raise redirect("/sharing")
    try:
        labels = _subset([str(v) for v in form.getall("hide", [])], LABELS)
    except FormRefused as refused:
        notify(request, refused.key)
        raise redirect("/sharing") from None
    if not labels:
        notify(request, "sharing.error.hide")
        raise redirect("/sharing")
    try:
        await patient.restrict(grant=issued.grant.id, labels=labels, now=int(time.time()))
    except FedrecordError as error:
        notify(request, "sharing.failed", code=str(error.code))
        raise redirect("/sharing") from None
    notify(
        request,
        "sharing.hidden",
        sentence=await sentence_for(patient, issued, language=language_of(request)),
    )
    raise redirect("/sharing")


def routes(app: web.Application) -> None:
    app.router.add_get("/sharing", sharing_page)
    app.router.add_post("/sharing/grant", grant)
    app.router.add_post("/sharing/{grant}/revoke", revoke)
    app.router.add_post("/sharing/{grant}/hide", hide)
