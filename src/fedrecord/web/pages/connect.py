"""Connect a clinic: a one-time invitation shown as a QR code and a code to copy, and who connected.

An invitation's token is kept by the node only as a hash, so the code can be
shown only by the answer that made it.  To keep POST-redirect-GET, the page
that makes one remembers it in memory for the signed-in session (for an hour
at most, a few at a time) and the redirect names it by a short reference:
``/connect?shown=REF``.  Another session, or the same one after sign-out,
cannot see it.  The devices page (:mod:`.devices`) makes and shows its
invitations the same way.
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import segno
from aiohttp import web

from fedrecord.core import Grant
from fedrecord.core.errors import FedrecordError
from fedrecord.node.patient import DAY, PatientNode
from fedrecord.node.sync import is_device_grant
from fedrecord.node.wire import Invitation

from .. import i18n
from ..app import PATIENT, language_of, notify, redirect, render, session_of
from ..sentences import clock, long_date

#: Invitations made in the page are valid for 1 to this many days (7 unless chosen).
MAX_DAYS = 30
DEFAULT_DAYS = 7
MAX_LABEL = 80
#: How long, and how many, invitations made in a session stay viewable in it.
SHOWN_SECONDS = 60 * 60
SHOWN_PER_SESSION = 10

i18n.register(
    {
        "connect.title": ("Connect a clinic", "Connecter un cabinet"),
        "connect.intro": (
            "To let a clinic or a lab send documents to your record, give it an invitation. "
            "The invitation only lets it send you documents: it cannot read anything until you share.",
            "Pour qu'un cabinet ou un laboratoire puisse envoyer des documents dans votre dossier, "
            "donnez-lui une invitation. Elle lui permet seulement de vous envoyer des documents : "
            "il ne peut rien lire tant que vous ne partagez pas.",
        ),
        "connect.new": ("Make an invitation", "Créer une invitation"),
        "connect.for": ("Who is it for?", "Pour qui est-elle ?"),
        "connect.for.hint": (
            "For your own list, for example “Dr Martin's practice”.",
            "Pour votre propre liste, par exemple « Cabinet du Dr Martin ».",
        ),
        "connect.days": ("Valid for (days)", "Valable pendant (jours)"),
        "connect.days.hint": (
            "From 1 to {max} days. It can be used only once.",
            "De 1 à {max} jours. Elle ne peut servir qu'une fois.",
        ),
        "connect.make": ("Make the invitation", "Créer l'invitation"),
        "connect.made": ("Invitation made.", "Invitation créée."),
        "connect.error.label": (
            "Please say who the invitation is for (at most {max} characters).",
            "Indiquez pour qui est l'invitation ({max} caractères au plus).",
        ),
        "connect.error.days": (
            "The number of days must be a whole number from 1 to {max}.",
            "Le nombre de jours doit être un nombre entier de 1 à {max}.",
        ),
        "connect.error.node": (
            "Your node could not do this ({code}). Please try again.",
            "Votre nœud n'a pas pu le faire ({code}). Veuillez réessayer.",
        ),
        "invitation.title": ("Invitation for {label}", "Invitation pour {label}"),
        "invitation.scan": (
            "Show this QR code to the clinic, or give it the code below.",
            "Montrez ce code QR au cabinet, ou donnez-lui le code ci-dessous.",
        ),
        "invitation.qr.alt": (
            "QR code of the invitation for {label}",
            "Code QR de l'invitation pour {label}",
        ),
        "invitation.code": ("Code to copy", "Code à copier"),
        "invitation.copy": ("Copy the code", "Copier le code"),
        "invitation.url": (
            "The same invitation as a web address",
            "La même invitation sous forme d'adresse web",
        ),
        "invitation.expires": (
            "It works once, until {when} ({left}).",
            "Elle ne sert qu'une fois, jusqu'au {when} ({left}).",
        ),
        "invitation.secret": (
            "Anyone who has this code can send documents to your inbox until it is used: give it only to "
            "the clinic. It will not be shown again once you leave this session.",
            "Toute personne qui a ce code peut déposer des documents dans votre boîte de réception tant "
            "qu'il n'a pas servi : ne le donnez qu'au cabinet. Il ne sera plus affiché après cette session.",
        ),
        "invitation.gone": (
            "This invitation can no longer be shown. Make a new one if you need it.",
            "Cette invitation ne peut plus être affichée. Créez-en une nouvelle si besoin.",
        ),
        "connect.list": ("Invitations you made", "Invitations que vous avez créées"),
        "connect.list.none": (
            "You have not made any invitation yet.",
            "Vous n'avez encore créé aucune invitation.",
        ),
        "connect.col.for": ("For", "Pour"),
        "connect.col.until": ("Valid until", "Valable jusqu'au"),
        "connect.col.state": ("State", "État"),
        "connect.state.used": ("Used by {name}", "Utilisée par {name}"),
        "connect.state.waiting": ("Not used yet", "Pas encore utilisée"),
        "connect.state.expired": ("Expired, never used", "Expirée sans avoir servi"),
        "connect.clinics": ("Connected clinics", "Cabinets connectés"),
        "connect.clinics.none": ("No clinic is connected yet.", "Aucun cabinet n'est encore connecté."),
        "connect.clinics.since": ("{name}, connected on {when}", "{name}, connecté le {when}"),
        "connect.clinics.note": (
            "A connected clinic can send you documents. What it may read is on the Sharing page; "
            "your own devices are on the My devices page.",
            "Un cabinet connecté peut vous envoyer des documents. Ce qu'il peut lire figure sur la page "
            "Partage ; vos propres appareils, sur la page Mes appareils.",
        ),
        "connect.when.days": ("in {n} days", "dans {n} jours"),
        "connect.when.day": ("in 1 day", "dans 1 jour"),
        "connect.when.hours": ("in {n} hours", "dans {n} heures"),
        "connect.when.hour": ("in less than 2 hours", "dans moins de 2 heures"),
        "connect.when.past": ("already past", "déjà passé"),
    }
)

def plain_date(seconds: int, language: str, *, hour: bool = True) -> str:
    """``14 March 2026 at 15:04 UTC`` (or ``14 mars 2026 à 15:04 UTC``): in UTC, as every page shows times."""
    day = long_date(seconds, language)
    if not hour:
        return day
    return f"{day} {'à' if language == 'fr' else 'at'} {clock(seconds)} UTC"


def time_left(seconds: int, now: int) -> tuple[str, dict[str, object]]:
    """The text key and values of "in 7 days", "in 5 hours"..."""
    left = seconds - now
    if left <= 0:
        return "connect.when.past", {}
    # Rounded: an invitation made for 3 days still reads "in 3 days" a few seconds later.
    if left >= DAY + DAY // 2:
        return "connect.when.days", {"n": (left + DAY // 2) // DAY}
    if left >= DAY - 1800:
        return "connect.when.day", {}
    if left >= 2 * 3600:
        return "connect.when.hours", {"n": (left + 1800) // 3600}
    return "connect.when.hour", {}


def qr_data_uri(text: str) -> str:
    """``text`` as a QR code: a black-on-white PNG in a ``data:`` URI (the page's CSP allows those)."""
    buffer = io.BytesIO()
    segno.make(text, error="m", micro=False).save(buffer, kind="png", scale=6, border=4)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# --- invitations shown in a session -----------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    invitation: Invitation
    label: str
    made: float


SHOWN: web.AppKey[dict[str, dict[str, Shown]]] = web.AppKey("connect.shown")


def _shown_of(request: web.Request) -> dict[str, Shown]:
    everything = request.app[SHOWN]
    session = session_of(request)
    cutoff = time.monotonic() - SHOWN_SECONDS
    for token in list(everything):
        kept = {ref: s for ref, s in everything[token].items() if s.made > cutoff}
        if kept:
            everything[token] = kept
        else:
            del everything[token]
    return everything.setdefault(session.token, {})


def remember_shown(request: web.Request, invitation: Invitation, label: str) -> str:
    """Keep ``invitation`` viewable in this session; its reference for ``?shown=``."""
    mine = _shown_of(request)
    ref = hashlib.sha256(invitation.token).hexdigest()[:24]
    mine[ref] = Shown(invitation, label, time.monotonic())
    while len(mine) > SHOWN_PER_SESSION:
        del mine[min(mine, key=lambda r: mine[r].made)]
    return ref


@dataclass(frozen=True)
class InvitationView:
    label: str
    code: str
    url: str
    qr: str
    expires: str
    left: tuple[str, dict[str, object]]


def shown_invitation(request: web.Request) -> InvitationView | bool | None:
    """The invitation named by ``?shown=`` if this session may still see it; ``False`` if it no longer may,
    ``None`` when none is named."""
    ref = request.query.get("shown")
    if not ref:
        return None
    shown = _shown_of(request).get(ref)
    if shown is None:
        return False
    invitation = shown.invitation
    return InvitationView(
        label=shown.label,
        code=invitation.code(),
        url=invitation.url(),
        qr=qr_data_uri(invitation.url()),
        expires=plain_date(invitation.expires, language_of(request)),
        left=time_left(invitation.expires, int(time.time())),
    )


def refused_status(exc: FedrecordError) -> int:
    """The status of a page showing the node's refusal: its own when a 4xx, else 409 (never a 5xx)."""
    return exc.status if 400 <= exc.status < 500 else 409


# --- the form -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvitationForm:
    label: str
    days: str
    error: tuple[str, dict[str, object]] | None = None


def read_invitation_form(form: Mapping[str, Any]) -> tuple[InvitationForm, int]:
    """The label and days of an invitation form, with the error to show (then days is 0)."""
    label = " ".join(str(form.get("label", "")).split())
    days_text = str(form.get("days", DEFAULT_DAYS)).strip()
    if not label or len(label) > MAX_LABEL:
        return InvitationForm(label, days_text, ("connect.error.label", {"max": MAX_LABEL})), 0
    try:
        days = int(days_text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_DAYS:
        return InvitationForm(label, days_text, ("connect.error.days", {"max": MAX_DAYS})), 0
    return InvitationForm(label, days_text), days


async def make_invitation(request: web.Request, label: str, days: int) -> str:
    """Make an invitation as ``fedrecord invite`` does; its ``?shown=`` reference.

    Raises:
        FedrecordError: the node refused.
    """
    invitation = await request.app[PATIENT].create_invitation(
        label=label, now=int(time.time()), ttl=days * DAY
    )
    return remember_shown(request, invitation, label)


# --- who connected --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvitationRowView:
    label: str
    expires: str
    state: tuple[str, dict[str, object]]


@dataclass(frozen=True)
class ConnectedNode:
    did: str
    name: str
    #: The label of the invitation it used.
    label: str
    #: When it connected (its deposit grant's date), in plain words.
    since: str
    at: int


async def device_holders(patient: PatientNode) -> set[str]:
    """Nodes holding a device grant (``manage`` over the whole record) from the patient, whatever its state."""
    return {g.record.audience for g in await patient.all_grants() if is_device_grant(g.record)}


async def invitation_rows(patient: PatientNode, language: str, now: int) -> list[InvitationRowView]:
    rows = []
    for row in await patient.store.invitations():
        if row.used_by is not None:
            state: tuple[str, dict[str, object]] = (
                "connect.state.used",
                {"name": await patient.peer_name(row.used_by)},
            )
        elif now >= row.expires:
            state = ("connect.state.expired", {})
        else:
            state = ("connect.state.waiting", {})
        rows.append(InvitationRowView(row.label, plain_date(row.expires, language), state))
    return rows


async def connected_nodes(patient: PatientNode, language: str) -> list[ConnectedNode]:
    """Every node that connected with an invitation, newest first (one entry per node)."""
    nodes: dict[str, ConnectedNode] = {}
    for row in await patient.store.invitations():
        if row.used_by is None:
            continue
        grant = await patient.store.record(Grant, row.grant_id) if row.grant_id else None
        at = grant.record.iat if grant is not None else 0
        known = nodes.get(row.used_by)
        if known is not None and known.at >= at:
            continue
        nodes[row.used_by] = ConnectedNode(
            did=row.used_by,
            name=await patient.peer_name(row.used_by),
            label=row.label,
            since=plain_date(at, language, hour=False) if at else "",
            at=at,
        )
    return sorted(nodes.values(), key=lambda n: n.at, reverse=True)


# --- handlers -------------------------------------------------------------------------------------------


async def connect_page(
    request: web.Request, *, form: InvitationForm | None = None, status: int = 200
) -> web.Response:
    patient = request.app[PATIENT]
    language = language_of(request)
    devices = await device_holders(patient)
    clinics = [n for n in await connected_nodes(patient, language) if n.did not in devices]
    return render(
        request,
        "connect.html",
        status=status,
        form=form or InvitationForm("", str(DEFAULT_DAYS)),
        max_days=MAX_DAYS,
        max_label=MAX_LABEL,
        shown=shown_invitation(request),
        scan_key="invitation.scan",
        secret_key="invitation.secret",
        level=2,
        invitations=await invitation_rows(patient, language, int(time.time())),
        clinics=clinics,
    )


async def show(request: web.Request) -> web.Response:
    return await connect_page(request)


async def invite(request: web.Request) -> web.Response:
    form, days = read_invitation_form(await request.post())
    if form.error is not None:
        return await connect_page(request, form=form, status=400)
    try:
        ref = await make_invitation(request, form.label, days)
    except FedrecordError as exc:
        failed = InvitationForm(form.label, form.days, ("connect.error.node", {"code": exc.code.value}))
        return await connect_page(request, form=failed, status=refused_status(exc))
    notify(request, "connect.made")
    raise redirect(f"/connect?shown={ref}#invitation")


def routes(app: web.Application) -> None:
    app[SHOWN] = {}
    app.router.add_get("/connect", show)
    app.router.add_post("/connect", invite)
