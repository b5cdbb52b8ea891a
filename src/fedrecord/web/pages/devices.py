"""My devices: the devices enrolled, enrolling a new one in two steps, and cutting off a lost one (US-12).

A device is a node of its own that connects like a clinic, with an
invitation (step 1), and then receives a *device grant* (step 2): the grant
``fedrecord grant --to DID --device`` issues, over the whole record, with
``read``, ``delegate`` and ``manage`` (spec 15.17).  Revoking it cuts the
device off, and the grants it issued lapse with it ([API-47]).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from fedrecord.core import Revocation, Scope
from fedrecord.core.errors import FedrecordError
from fedrecord.node.patient import PatientNode
from fedrecord.node.sync import is_device_grant

from .. import i18n
from ..app import PATIENT, language_of, notify, redirect, render
from .common import doc_id
from .connect import (
    DEFAULT_DAYS,
    MAX_DAYS,
    MAX_LABEL,
    ConnectedNode,
    InvitationForm,
    connected_nodes,
    make_invitation,
    plain_date,
    read_invitation_form,
    refused_status,
    shown_invitation,
)

#: What ``fedrecord grant --device`` issues: the whole record, past and future; these actions; this purpose.
DEVICE_ACTIONS = ("delegate", "manage", "read")
DEVICE_PURPOSE = "device"
#: Days a device grant lasts (the CLI's ``--days`` default).
DEVICE_DAYS = 90

i18n.register(
    {
        "devices.title": ("My devices", "Mes appareils"),
        "devices.intro": (
            "Your other devices, such as a phone or a backup box, keep a full copy of your record and stay "
            "up to date with this one. An enrolled device can read your whole record and share parts of it "
            "for you.",
            "Vos autres appareils, comme un téléphone ou un boîtier de sauvegarde, gardent une copie complète "
            "de votre dossier et restent à jour avec celui-ci. Un appareil inscrit peut lire tout votre "
            "dossier et en partager des parties pour vous.",
        ),
        "devices.list": ("Enrolled devices", "Appareils inscrits"),
        "devices.none": ("No device is enrolled yet.", "Aucun appareil n'est encore inscrit."),
        "devices.col.device": ("Device", "Appareil"),
        "devices.col.since": ("Enrolled on", "Inscrit le"),
        "devices.col.until": ("Valid until", "Valable jusqu'au"),
        "devices.col.state": ("State", "État"),
        "devices.col.action": ("Action", "Action"),
        "devices.state.active": ("Enrolled", "Inscrit"),
        "devices.state.revoked": ("Cut off", "Coupé"),
        "devices.state.expired": ("Expired", "Expiré"),
        "devices.revoke.label": ("Cut off {name}", "Couper {name}"),
        "devices.revoke.explain": (
            "Lost or stolen device? Cut it off. It can no longer read or update your record, and everything "
            "it shared with others stops working at once. The copies it made are destroyed when the nodes "
            "holding them learn of it. If you want to keep sharing something it shared, share it again from "
            "the Sharing page.",
            "Appareil perdu ou volé ? Coupez-le. Il ne peut plus lire ni mettre à jour votre dossier, et "
            "tout ce qu'il a partagé avec d'autres cesse aussitôt de fonctionner. Les copies qu'il a faites "
            "sont détruites dès que les nœuds qui les détiennent l'apprennent. Pour continuer à partager "
            "quelque chose qu'il avait partagé, partagez-le de nouveau depuis la page Partage.",
        ),
        "devices.revoked": (
            "{name} is cut off. What it had shared with others no longer works.",
            "{name} est coupé. Ce qu'il avait partagé avec d'autres ne fonctionne plus.",
        ),
        "devices.enroll": ("Enroll a new device", "Inscrire un nouvel appareil"),
        "devices.step1": ("Step 1: connect the new device", "Étape 1 : connecter le nouvel appareil"),
        "devices.step1.text": (
            "Make an invitation, then enter it on the new device or scan its QR code with it.",
            "Créez une invitation, puis saisissez-la sur le nouvel appareil ou scannez son code QR avec lui.",
        ),
        "devices.name": ("Name of the device", "Nom de l'appareil"),
        "devices.name.hint": (
            "For your own list, for example “My phone”.",
            "Pour votre propre liste, par exemple « Mon téléphone ».",
        ),
        "devices.scan": (
            "On the new device, scan this QR code or enter the code below. Then go on with step 2.",
            "Sur le nouvel appareil, scannez ce code QR ou saisissez le code ci-dessous. Passez ensuite à "
            "l'étape 2.",
        ),
        "devices.secret": (
            "Until it is used, anyone who has this code can connect to your record (without reading it): "
            "enter it only on your own device. It will not be shown again once you leave this session.",
            "Tant qu'il n'a pas servi, toute personne qui a ce code peut se connecter à votre dossier (sans "
            "le lire) : ne le saisissez que sur votre propre appareil. Il ne sera plus affiché après cette "
            "session.",
        ),
        "devices.pick.choose": ("Choose a device", "Choisissez un appareil"),
        "devices.step2": ("Step 2: make it your device", "Étape 2 : en faire votre appareil"),
        "devices.step2.text": (
            "Once the device has connected, choose it here. It will be able to read your whole record and "
            "share it for you for {days} days.",
            "Une fois l'appareil connecté, choisissez-le ici. Il pourra lire tout votre dossier et le "
            "partager pour vous pendant {days} jours.",
        ),
        "devices.pick": ("Connected device", "Appareil connecté"),
        "devices.pick.option": (
            "{name} (invitation “{label}”, connected on {when})",
            "{name} (invitation « {label} », connecté le {when})",
        ),
        "devices.pick.none": (
            "No new device has connected yet. Once it has used its invitation, reload this page.",
            "Aucun nouvel appareil ne s'est encore connecté. Quand il aura utilisé son invitation, "
            "rechargez cette page.",
        ),
        "devices.mine": (
            "This device is mine: it is not a clinic's.",
            "Cet appareil est à moi : ce n'est pas celui d'un cabinet.",
        ),
        "devices.make": ("Make it my device", "En faire mon appareil"),
        "devices.enrolled": (
            "{name} is now your device, until {when}.",
            "{name} est maintenant votre appareil, jusqu'au {when}.",
        ),
        "devices.made": (
            "Invitation made. Enter it on the new device.",
            "Invitation créée. Saisissez-la sur le nouvel appareil.",
        ),
        "devices.error.pick": (
            "Choose the device from the list of connected devices.",
            "Choisissez l'appareil dans la liste des appareils connectés.",
        ),
        "devices.error.mine": (
            "Tick the box to confirm that this device is yours. A clinic must never get a device's access.",
            "Cochez la case pour confirmer que cet appareil est à vous. Un cabinet ne doit jamais recevoir "
            "l'accès d'un appareil.",
        ),
        "devices.error.missing": (
            "This device is not in your list.",
            "Cet appareil n'est pas dans votre liste.",
        ),
        "devices.error.cut": ("This device is already cut off.", "Cet appareil est déjà coupé."),
        "devices.error.node": (
            "Your node could not do this ({code}). Please try again.",
            "Votre nœud n'a pas pu le faire ({code}). Veuillez réessayer.",
        ),
    }
)


@dataclass(frozen=True)
class Device:
    grant: bytes
    did: str
    name: str
    since: str
    until: str
    #: "active", "revoked" or "expired".
    state: str


async def enrolled(patient: PatientNode, language: str, now: int) -> list[Device]:
    """Every device grant the patient issued, newest first, with its state."""
    revoked = {r.record.grant for r in await patient.store.records(Revocation)}
    devices = []
    grants = [g for g in await patient.all_grants() if is_device_grant(g.record)]
    for grant in sorted(grants, key=lambda g: g.record.iat, reverse=True):
        record = grant.record
        state = "revoked" if grant.id in revoked else "expired" if now >= record.exp else "active"
        devices.append(
            Device(
                grant=grant.id,
                did=record.audience,
                name=await patient.peer_name(record.audience),
                since=plain_date(record.iat, language, hour=False),
                until=plain_date(record.exp, language, hour=False),
                state=state,
            )
        )
    return devices


async def candidates(patient: PatientNode, language: str, devices: list[Device]) -> list[ConnectedNode]:
    """Connected nodes that could be enrolled: those not holding a device grant in force."""
    active = {d.did for d in devices if d.state == "active"}
    return [n for n in await connected_nodes(patient, language) if n.did not in active]


async def devices_page(
    request: web.Request,
    *,
    form: InvitationForm | None = None,
    error: tuple[str, dict[str, object]] | None = None,
    status: int = 200,
) -> web.Response:
    patient = request.app[PATIENT]
    language = language_of(request)
    devices = await enrolled(patient, language, int(time.time()))
    return render(
        request,
        "devices.html",
        status=status,
        devices=devices,
        candidates=await candidates(patient, language, devices),
        form=form or InvitationForm("", str(DEFAULT_DAYS)),
        error=error,
        max_days=MAX_DAYS,
        max_label=MAX_LABEL,
        device_days=DEVICE_DAYS,
        shown=shown_invitation(request),
        scan_key="devices.scan",
        secret_key="devices.secret",
        level=4,
    )


async def show(request: web.Request) -> web.Response:
    return await devices_page(request)


async def invite(request: web.Request) -> web.Response:
    """Step 1: an invitation for the new device to connect with."""
    form, days = read_invitation_form(await request.post())
    if form.error is not None:
        return await devices_page(request, form=form, status=400)
    try:
        ref = await make_invitation(request, form.label, days)
    except FedrecordError as exc:
        return await devices_page(
            request,
            form=form,
            error=("devices.error.node", {"code": exc.code.value}),
            status=refused_status(exc),
        )
    notify(request, "devices.made")
    raise redirect(f"/devices?shown={ref}#invitation")


async def enroll(request: web.Request) -> web.Response:
    """Step 2: the device grant for a connected node, as ``fedrecord grant --to DID --device`` makes it."""
    patient = request.app[PATIENT]
    language = language_of(request)
    form = await request.post()
    did = str(form.get("device", ""))
    now = int(time.time())
    chosen = next(
        (
            n
            for n in await candidates(patient, language, await enrolled(patient, language, now))
            if n.did == did
        ),
        None,
    )
    if chosen is None:
        return await devices_page(request, error=("devices.error.pick", {}), status=400)
    if form.get("mine") != "yes":
        return await devices_page(request, error=("devices.error.mine", {}), status=400)
    try:
        grant = await patient.grant(
            audience=chosen.did,
            scope=Scope(past=True, future=True),
            actions=DEVICE_ACTIONS,
            purpose=DEVICE_PURPOSE,
            days=DEVICE_DAYS,
            now=now,
        )
    except FedrecordError as exc:
        return await devices_page(
            request, error=("devices.error.node", {"code": exc.code.value}), status=refused_status(exc)
        )
    notify(
        request, "devices.enrolled", name=chosen.name, when=plain_date(grant.record.exp, language, hour=False)
    )
    raise redirect("/devices")


async def revoke(request: web.Request) -> web.Response:
    """Cut off a lost device: revoke its device grant; what it granted lapses with it ([API-47])."""
    patient = request.app[PATIENT]
    form = await request.post()
    grant_id = doc_id(str(form.get("grant", "")))
    devices = await enrolled(patient, language_of(request), int(time.time()))
    device = next((d for d in devices if d.grant == grant_id), None)
    if device is None or grant_id is None:
        return await devices_page(request, error=("devices.error.missing", {}), status=404)
    if device.state == "revoked":
        return await devices_page(request, error=("devices.error.cut", {}), status=409)
    try:
        # No reason: a revocation goes to every node the patient knows, and "device cut off" would tell
        # them all that the patient lost a device.
        await patient.revoke(grant_id, now=int(time.time()))
    except FedrecordError as exc:
        return await devices_page(
            request, error=("devices.error.node", {"code": exc.code.value}), status=refused_status(exc)
        )
    notify(request, "devices.revoked", name=device.name)
    raise redirect("/devices")


def routes(app: web.Application) -> None:
    app.router.add_get("/devices", show)
    app.router.add_post("/devices/invite", invite)
    app.router.add_post("/devices/enroll", enroll)
    app.router.add_post("/devices/revoke", revoke)
