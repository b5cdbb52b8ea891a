"""The life cycle of a document on a node, as one table (spec 15.5, 15.6, 15.11, 15.7 and [API-27]).

Theory of operation.  A node holds a document in one of four states, kept in
its ``documents`` row: on the patient's node a deposit waits in the ``inbox``
until the patient ``accepted`` it into the record; a clinic keeps the
documents it ``authored`` (its own legal record) and the copies ``shared``
with it under a grant.  No row (``None`` below) is the state of a document
never held here, and of one rejected, deleted or destroyed: what is left of
it is records (decision, tombstone, attestation), never its key.

Everything that moves a document from one state to another is an
:class:`Event`, and :data:`TRANSITIONS` holds every move there is, keyed by
(state, event), as h11's ``_state.py`` does.  A pair it does not hold is
refused by :func:`next_state` with the code the protocol answers for that
event (:data:`REFUSALS`).  Nodes call :func:`next_state` before they write a
document's row, and write the state it returns.

Two rules stand beside the table because they need more than the row:
a document rejected or deleted does not come back under its id ([API-13]
step 9: the node keeps its decision or tombstone), and a copy is fetched
only while a live chain reaches it ([API-22]).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from .errors import Code, LocalProtocolError, RemoteProtocolError

__all__ = ["DocumentState", "Event", "TRANSITIONS", "REFUSALS", "next_state", "kept_state"]


class DocumentState(StrEnum):
    """Where a document stands on the node holding it (the ``state`` column of its row)."""

    INBOX = "inbox"
    """Patient's node: deposited and checked ([API-13]), waiting for the patient's decision."""
    ACCEPTED = "accepted"
    """Patient's node: in the record ([DOC-8]); listed and fetched under grants."""
    AUTHORED = "authored"
    """Clinic: written here and deposited; kept as the clinic's own legal record."""
    SHARED = "shared"
    """Clinic or device: a copy fetched under a grant; destroyed when the grant dies or it is withdrawn."""


class Event(StrEnum):
    """What moves a document from one state to another."""

    DEPOSITED = "deposited"
    """A deposit passed every check of [API-13] (patient's node)."""
    ACCEPT = "accept"
    """The patient accepts it (15.6)."""
    REJECT = "reject"
    """The patient rejects it (15.6): destroyed, the depositor told."""
    DELETE = "delete"
    """The patient withdraws it (15.11): tombstone signed, key and ciphertext destroyed."""
    AUTHOR = "author"
    """A clinic writes and encrypts it (before its deposit is sent)."""
    FETCHED = "fetched"
    """A copy was fetched and checked ([API-22]): kept, or the kept one refreshed."""
    WITHDRAWN = "withdrawn"
    """The patient's tombstone arrived ([API-27]): a copy destroyed, an authored document retained."""
    REVOKED = "revoked"
    """A grant up the chain a copy was kept under was revoked ([API-19])."""


_S = DocumentState
_E = Event

TRANSITIONS: Final[Mapping[tuple[DocumentState | None, Event], DocumentState | None]] = MappingProxyType(
    {
        # The patient's node.
        (None, _E.DEPOSITED): _S.INBOX,
        (_S.INBOX, _E.ACCEPT): _S.ACCEPTED,
        (_S.INBOX, _E.REJECT): None,
        # A deposit can be deleted before it is decided: its tombstone tells the depositor ([API-16]).
        (_S.INBOX, _E.DELETE): None,
        (_S.ACCEPTED, _E.DELETE): None,
        # A clinic, or a patient's device.
        (None, _E.AUTHOR): _S.AUTHORED,
        (None, _E.FETCHED): _S.SHARED,
        (_S.SHARED, _E.FETCHED): _S.SHARED,
        # Its own document, come back through a grant of the patient's, stays its legal record.
        (_S.AUTHORED, _E.FETCHED): _S.AUTHORED,
        (_S.SHARED, _E.WITHDRAWN): None,
        (_S.AUTHORED, _E.WITHDRAWN): _S.AUTHORED,
        # Never held, or destroyed before: attested as destroyed, nothing to do ([API-27]).
        (None, _E.WITHDRAWN): None,
        (_S.SHARED, _E.REVOKED): None,
    }
)
"""Every move there is: (state before, event) to the state after; ``None`` is "no row"."""

REFUSALS: Final[Mapping[Event, tuple[Code, str]]] = MappingProxyType(
    {
        # One answer for a document held in any state, rejected or deleted ([API-13] step 9, [CAP-12]).
        _E.DEPOSITED: (Code.REPLAY, "this document was already deposited"),
        # The patient's own actions on a document that is not (or no longer) where they act.
        _E.ACCEPT: (Code.NOT_FOUND, "no such document"),
        _E.REJECT: (Code.NOT_FOUND, "no such document"),
        _E.DELETE: (Code.NOT_FOUND, "no such document"),
        # A document id is the hash of a stream under a fresh key: one already held is a replay.
        _E.AUTHOR: (Code.REPLAY, "this document is already held"),
        # A copy over the patient's own record or inbox: the patient's node fetches nothing.
        _E.FETCHED: (Code.MALFORMED, "a copy of a document this node holds as the patient's"),
        _E.WITHDRAWN: (Code.MALFORMED, "a tombstone for a document this node holds as the patient's"),
        # Revocations destroy shared copies only.
        _E.REVOKED: (Code.MALFORMED, "a revocation destroys shared copies only"),
    }
)
"""The code and message a node answers when an event does not apply to the state it finds."""


def next_state(state: DocumentState | str | None, event: Event) -> DocumentState | None:
    """The state a document moves to on ``event``.

    Args:
        state: its state now (a row's ``state`` column as read), ``None`` for no row.
        event: what happens to it.

    Raises:
        RemoteProtocolError: the code and message of :data:`REFUSALS` for the
            event, when the table has no move from ``state`` on it (a state
            this table does not know, read from a damaged row, included).
    """
    try:
        before = None if state is None else DocumentState(state)
        return TRANSITIONS[(before, event)]
    except (ValueError, KeyError):
        code, message = REFUSALS[event]
        raise RemoteProtocolError(code, message) from None


def kept_state(state: DocumentState | str | None, event: Event) -> DocumentState:
    """As :func:`next_state`, for an event after which the node keeps the document's row.

    Raises:
        RemoteProtocolError: as :func:`next_state`.
        LocalProtocolError: ``malformed`` when the move leaves no row (a caller's bug).
    """
    after = next_state(state, event)
    if after is None:
        raise LocalProtocolError(Code.MALFORMED, f"{event.value} leaves no document to keep")
    return after
