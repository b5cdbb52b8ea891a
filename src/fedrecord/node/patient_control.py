"""The patient's control of its own node over HTTP: ``POST /v0/manage`` (spec/fedrecord.md, 15.19).

The local CLI drives a patient's node by opening its home directory.  A tool
that holds the patient's signing key somewhere else -- the patient's CLI on
another machine, a conformance suite acting as the patient -- does the same
through this endpoint: a request signed by the node's *own* key ([API-50])
names an ``op`` and its arguments, and the op runs the very
:class:`PatientNode` method the CLI command runs (same transaction, same
state head, same outbox entry, same event-stream push).

Theory of operation: :data:`OPS` is the one table of ops.  Each entry checks
its arguments (``malformed`` for a missing or ill-typed one, [API-51]) before
it calls the node, and the node method refuses an unknown document or grant
with ``not-found`` inside its transaction, so a refusal writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from fedrecord.core import Code, RemoteProtocolError

from . import manage_args as args
from .patient import DAY, PatientNode
from .sync import MAX_IDS

MAX_TTL: Final = 30 * DAY
"""The longest an invitation made through the endpoint lives (seconds)."""
DEFAULT_TTL: Final = 7 * DAY
"""An invitation's life when the request names none, as ``fedrecord invite`` ([API-8])."""
DEFAULT_LABEL: Final = "clinic"
MAX_LABELS: Final = 64
"""Labels one request may name."""

Op = args.Op[PatientNode]


async def _invite(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    label = args.optional_text(body, "label", 128) or DEFAULT_LABEL
    ttl = body.get("ttl", DEFAULT_TTL)
    if type(ttl) is not int or not 1 <= ttl <= MAX_TTL:
        raise args.malformed(f"ttl is a number of seconds from 1 to {MAX_TTL}")
    invitation = await patient.create_invitation(label=label, now=now, ttl=ttl)
    return {"code": invitation.code(), "exp": invitation.expires}


async def _accept(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    doc, labels = args.record_id(body, "doc"), args.tokens(body, "labels", max_items=MAX_LABELS)
    entry = await patient.accept(doc, labels=labels, now=now)
    return {"entry": entry.encoded}


async def _reject(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    decision = await patient.reject(args.record_id(body, "doc"), now=now)
    return {"decision": decision.encoded}


async def _label(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    doc = args.record_id(body, "doc")
    labels = args.tokens(body, "labels", max_items=MAX_LABELS, required=True)
    remove = args.flag(body, "remove")
    return {"labels": await patient.label(doc, labels, remove=remove)}


async def _hide(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    doc, hidden = args.record_id(body, "doc"), args.flag(body, "hidden", required=True)
    await patient.hide(doc, hidden)
    return {}


async def _revoke(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    grant, reason = args.record_id(body, "grant"), args.optional_text(body, "reason", 256)
    revocation = await patient.revoke(grant, now=now, reason=reason)
    return {"revocation": revocation.encoded}


async def _delete(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    tombstone = await patient.delete(args.record_id(body, "doc"), now=now)
    return {"tombstone": tombstone.encoded}


async def _keep(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    records = body.get("records")
    if type(records) is not list or len(records) > MAX_IDS or not all(type(r) is bytes for r in records):
        raise args.malformed(f"records is an array of at most {MAX_IDS} encoded records")
    return {"stored": await patient.keep_own(records, now=now)}


async def _inbox(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    items = [
        {
            "doc": item.doc,
            "author": item.author,
            "title": item.title,
            "category": item.category,
            "labels": list(item.labels),
            "date": item.date,
            "size": item.size,
        }
        for item in await patient.inbox()
    ]
    return {"items": items}


async def _audit(patient: PatientNode, body: Mapping[str, Any], now: int) -> dict[str, Any]:
    entries = [
        {
            "seq": link.seq,
            "receipt": link.receipt,
            "at": link.at,
            "prev_hash": link.prev_hash,
            "entry_hash": link.entry_hash,
            "countersignature": link.countersignature,
        }
        for link in await patient.store.audit_links()
    ]
    return {"entries": entries}


OPS: Final[Mapping[str, Op]] = {
    "invite": _invite,
    "accept": _accept,
    "reject": _reject,
    "label": _label,
    "hide": _hide,
    "revoke": _revoke,
    "delete": _delete,
    "keep": _keep,
    "inbox": _inbox,
    "audit": _audit,
}
"""Every op of ``manage-request``, by name ([API-51]): any other is ``malformed``."""


async def manage(
    patient: PatientNode, requester: str, body: Mapping[str, Any], *, now: int
) -> dict[str, Any]:
    """Run one op of a verified, decoded ``manage-request``; the fields of its ``manage-answer``.

    Args:
        requester: the did that signed the request (verified by the caller, [HTTP-7]).

    Raises:
        RemoteProtocolError: ``wrong-audience`` when ``requester`` is not the node itself
            ([API-50]), before the body is looked at; ``malformed`` for an unknown ``op`` or
            a missing or ill-typed argument ([API-51]); ``not-found`` for an unknown document
            or grant; the codes of ``keep`` ([API-53]).  Nothing is changed then.
    """
    if requester != patient.home.did:
        raise RemoteProtocolError(Code.WRONG_AUDIENCE, "only the patient's own key manages its node")
    return await args.op_of(body, OPS)(patient, body, now)
