"""Labels, hiding and deletion of one document of the record (US-6, US-7).

The document page (``/record/{doc}``, :mod:`.record`) renders
``document_actions.html``, which adds to it the forms posted here: the
sensitivity labels as checkboxes, hide or show, and a link to the deletion's
confirmation page.  A deletion destroys the document here and tells every
clinic; their signed attestations arrive later, one by one, and are listed on
``/deleted/{doc}``, a page that lasts after the document's row is gone.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from fedrecord.core.errors import FedrecordError
from fedrecord.node.patient import PatientNode

from .. import i18n
from ..app import PATIENT, TEMPLATES, language_of, notify, redirect, render
from ..sentences import clock, long_date
from .common import LABELS, category_name, doc_id, label_name, record_document

i18n.register(
    {
        # On the document page.
        "actions.labels.title": ("Sensitivity labels", "Étiquettes de sensibilité"),
        "actions.labels.legend": ("Labels of this document", "Étiquettes de ce document"),
        "actions.labels.help": (
            "A label marks a document as sensitive. When you share, you can keep every document with a "
            "given label from a clinic: it then cannot even tell the document exists.",
            "Une étiquette signale un document sensible. Quand vous partagez, vous pouvez cacher à un cabinet "
            "tous les documents portant une étiquette : il ne peut alors même pas savoir qu'ils existent.",
        ),
        "actions.labels.save": ("Save the labels", "Enregistrer les étiquettes"),
        "actions.labels.saved": (
            "The labels of “{title}” are saved.",
            "Les étiquettes de « {title} » sont enregistrées.",
        ),
        "actions.labels.unchanged": (
            "The labels of “{title}” were already these: nothing changed.",
            "Les étiquettes de « {title} » étaient déjà celles-ci : rien n'a changé.",
        ),
        "actions.labels.unknown": (
            "That label is not one this page knows. Nothing was changed.",
            "Cette étiquette n'est pas connue de cette page. Rien n'a été modifié.",
        ),
        "actions.hide.title": ("Hiding", "Masquage"),
        "actions.hide.what": (
            "Hiding a document keeps it from every clinic, whatever you have granted them: no clinic can see "
            "it, read it, or even tell it exists. You still see it in your record, and you can show it again "
            "at any time. Copies a clinic already read stay with it: to withdraw those, delete the document.",
            "Masquer un document le cache à tous les cabinets, quels que soient les accès que vous leur avez "
            "donnés : aucun cabinet ne peut le voir, le lire, ni même savoir qu'il existe. Vous le voyez toujours "
            "dans votre dossier, et vous pouvez le montrer de nouveau à tout moment. Les copies qu'un cabinet a "
            "déjà lues restent chez lui : pour les retirer, supprimez le document.",
        ),
        "actions.hide.is_hidden": (
            "This document is hidden: no clinic sees it. You still do.",
            "Ce document est masqué : aucun cabinet ne le voit. Vous, si.",
        ),
        "actions.hide.button": ("Hide from every clinic", "Masquer à tous les cabinets"),
        "actions.unhide.button": ("Show it again", "Le montrer de nouveau"),
        "actions.hidden": (
            "“{title}” is hidden: no clinic sees it any more, whatever you granted. You still do.",
            "« {title} » est masqué : plus aucun cabinet ne le voit, quels que soient vos accès. Vous, si.",
        ),
        "actions.shown": (
            "“{title}” is shown again: the clinics you granted it to can see it.",
            "« {title} » est de nouveau visible : les cabinets à qui vous l'avez partagé peuvent le voir.",
        ),
        "actions.delete.title": ("Deletion", "Suppression"),
        "actions.delete.link": ("Delete this document…", "Supprimer ce document…"),
        "actions.audit.link": ("Who looked at this document", "Qui a consulté ce document"),
        "actions.failed": (
            "Your node could not do this ({code}). Nothing was changed.",
            "Votre nœud n'a pas pu le faire ({code}). Rien n'a été modifié.",
        ),
        # The confirmation page.
        "delete.title": ("Delete “{title}”?", "Supprimer « {title} » ?"),
        "delete.what": ("What deleting means", "Ce que signifie supprimer"),
        "delete.here": (
            "The document is destroyed on your node: its content and its key. It leaves your record.",
            "Le document est détruit sur votre nœud : son contenu et sa clé. Il quitte votre dossier.",
        ),
        "delete.clinics": (
            "Every clinic that holds a copy through you is told: it destroys its copy and its key, and sends "
            "back a signed confirmation. You will see each confirmation as it arrives.",
            "Chaque cabinet qui en détient une copie grâce à vous est prévenu : il détruit sa copie et sa clé, "
            "et vous renvoie une confirmation signée. Vous verrez chaque confirmation à son arrivée.",
        ),
        "delete.author": (
            "A clinic that wrote the document itself keeps its own copy: it belongs to that clinic's medical "
            "file, and its confirmation says until when it keeps it.",
            "Un cabinet qui a lui-même rédigé le document garde sa propre copie : elle fait partie de son "
            "dossier médical, et sa confirmation dit jusqu'à quand il la garde.",
        ),
        "delete.final": ("This cannot be undone.", "C'est définitif : impossible de revenir en arrière."),
        "delete.confirm": ("Delete for good", "Supprimer définitivement"),
        "delete.cancel": ("Keep it and go back", "Le garder et revenir"),
        "delete.unconfirmed": (
            "Nothing was deleted: please confirm on this page.",
            "Rien n'a été supprimé : veuillez confirmer sur cette page.",
        ),
        # After the deletion.
        "deleted.title": ("Deleted document", "Document supprimé"),
        "deleted.done": (
            "“{title}” is deleted from your record and destroyed on your node.",
            "« {title} » est supprimé de votre dossier et détruit sur votre nœud.",
        ),
        "deleted.when": (
            "You deleted this document on {date}. It is destroyed on your node.",
            "Vous avez supprimé ce document le {date}. Il est détruit sur votre nœud.",
        ),
        "deleted.answers": ("Confirmations from the clinics", "Confirmations des cabinets"),
        "deleted.col.node": ("Clinic", "Cabinet"),
        "deleted.col.answer": ("Answer", "Réponse"),
        "deleted.col.when": ("When", "Quand"),
        "deleted.destroyed": (
            "Destroyed its copy and key (signed confirmation)",
            "A détruit sa copie et sa clé (confirmation signée)",
        ),
        "deleted.retained": (
            "Keeps its own copy, as the document's author, until {date} (signed confirmation). Its reason: {basis}",
            "Garde sa propre copie, en tant qu'auteur du document, jusqu'au {date} (confirmation signée). "
            "Sa raison : {basis}",
        ),
        "deleted.awaited": ("Not answered yet", "Pas encore de réponse"),
        "deleted.waiting": (
            "{count} clinics have not answered yet. A clinic answers the next time it connects to your node: "
            "reload this page to see new answers.",
            "{count} cabinets n'ont pas encore répondu. Un cabinet répond la prochaine fois qu'il se connecte "
            "à votre nœud : rechargez cette page pour voir les nouvelles réponses.",
        ),
        "deleted.waiting.one": (
            "1 clinic has not answered yet. A clinic answers the next time it connects to your node: "
            "reload this page to see new answers.",
            "1 cabinet n'a pas encore répondu. Un cabinet répond la prochaine fois qu'il se connecte "
            "à votre nœud : rechargez cette page pour voir les nouvelles réponses.",
        ),
        "deleted.all": ("Every clinic has answered.", "Tous les cabinets ont répondu."),
        "deleted.nobody": (
            "No clinic is connected to your node: no copy is waiting to be destroyed.",
            "Aucun cabinet n'est connecté à votre nœud : aucune copie n'attend d'être détruite.",
        ),
        "deleted.reload": ("Reload this page", "Recharger cette page"),
        "deleted.unknown": (
            "No deletion of this document is known to your node.",
            "Votre nœud ne connaît aucune suppression de ce document.",
        ),
    }
)


def when(at: int, language: str) -> str:
    """A moment as the page writes it: "12 March 2027, 14:05 UTC"."""
    return f"{long_date(at, language)}, {clock(at)} UTC"


async def _entry(patient: PatientNode, text: str) -> dict[str, Any] | None:
    doc = doc_id(text)
    return await record_document(patient, doc) if doc is not None else None


def _back(entry: dict[str, Any]) -> web.HTTPSeeOther:
    return redirect(f"/record/{entry['doc'].hex()}")


async def save_labels(request: web.Request) -> web.Response:
    """Set the document's known labels to the boxes ticked; labels this page does not know are kept."""
    patient = request.app[PATIENT]
    entry = await _entry(patient, request.match_info["doc"])
    if entry is None:
        return render(request, "refused.html", status=404, message_key="record.missing")
    form = await request.post()
    chosen = {str(value) for value in form.getall("label", [])}
    if not chosen <= LABELS.keys():
        notify(request, "actions.labels.unknown")
        raise _back(entry)
    current = set(entry["labels"]) & LABELS.keys()
    added, removed = sorted(chosen - current), sorted(current - chosen)
    if not added and not removed:
        notify(request, "actions.labels.unchanged", title=entry["title"])
        raise _back(entry)
    try:
        if added:
            await patient.label(entry["doc"], added)
        if removed:
            await patient.label(entry["doc"], removed, remove=True)
    except FedrecordError as error:
        notify(request, "actions.failed", code=str(error.code))
        raise _back(entry) from None
    notify(request, "actions.labels.saved", title=entry["title"])
    raise _back(entry)


async def hide(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    entry = await _entry(patient, request.match_info["doc"])
    if entry is None:
        return render(request, "refused.html", status=404, message_key="record.missing")
    form = await request.post()
    hidden = str(form.get("hidden", "1")) != "0"
    try:
        await patient.hide(entry["doc"], hidden)
    except FedrecordError as error:
        notify(request, "actions.failed", code=str(error.code))
        raise _back(entry) from None
    notify(request, "actions.hidden" if hidden else "actions.shown", title=entry["title"])
    raise _back(entry)


async def confirm_delete(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    entry = await _entry(patient, request.match_info["doc"])
    if entry is None:
        return render(request, "refused.html", status=404, message_key="record.missing")
    return render(
        request,
        "delete_confirm.html",
        entry=entry,
        label_name=label_name(request),
        category_name=category_name(request),
    )


async def delete(request: web.Request) -> web.Response:
    patient = request.app[PATIENT]
    entry = await _entry(patient, request.match_info["doc"])
    if entry is None:
        doc = doc_id(request.match_info["doc"])
        if doc is not None and await patient.tombstone_of(doc) is not None:
            raise redirect(f"/deleted/{doc.hex()}")  # deleted already (a second click): its answers
        return render(request, "refused.html", status=404, message_key="record.missing")
    form = await request.post()
    if form.get("confirm") != "yes":
        notify(request, "delete.unconfirmed")
        raise redirect(f"/record/{entry['doc'].hex()}/delete")
    try:
        await patient.delete(entry["doc"], now=int(time.time()))
    except FedrecordError as error:
        notify(request, "actions.failed", code=str(error.code))
        raise _back(entry) from None
    notify(request, "deleted.done", title=entry["title"])
    raise redirect(f"/deleted/{entry['doc'].hex()}")


async def deleted(request: web.Request) -> web.Response:
    """The deletion of a document and the attestations the clinics sent back, and who is still awaited."""
    patient = request.app[PATIENT]
    doc = doc_id(request.match_info["doc"])
    tombstone = await patient.tombstone_of(doc) if doc is not None else None
    if doc is None or tombstone is None:
        return render(request, "refused.html", status=404, message_key="deleted.unknown")
    language = language_of(request)
    answers = []
    answered: set[str] = set()
    for attestation in await patient.attestations(doc):
        if attestation.signer in answered:
            continue
        answered.add(attestation.signer)
        record = attestation.record
        answers.append(
            {
                "name": await patient.peer_name(attestation.signer),
                "retained": record.outcome == "retained",
                "until": long_date(record.retain_until, language) if record.retain_until else "",
                "basis": record.basis or "",
                "when": when(record.iat, language),
            }
        )
    awaited = [
        await patient.peer_name(did)
        for did in await patient.expected_attestations(doc)
        if did not in answered
    ]
    return render(
        request,
        "deleted.html",
        doc=doc,
        deleted_on=when(tombstone.record.iat, language),
        answers=answers,
        awaited=awaited,
    )


def routes(app: web.Application) -> None:
    # The document page (record.py) renders document_actions.html, which lists every label this page knows.
    app[TEMPLATES].globals["label_codes"] = tuple(LABELS)
    app.router.add_post("/record/{doc}/labels", save_labels)
    app.router.add_post("/record/{doc}/hide", hide)
    app.router.add_get("/record/{doc}/delete", confirm_delete)
    app.router.add_post("/record/{doc}/delete", delete)
    app.router.add_get("/deleted/{doc}", deleted)
