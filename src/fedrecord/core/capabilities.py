"""Where grants are verified: may this requester do this action on this document now?

Theory of operation
-------------------
A *grant chain* is a list of signed grants, root first.  The root is issued
by the patient; each further link is issued by the audience of the link
before it, names that link as its ``parent``, and may only narrow it (spec
[CAP-2] .. [CAP-6]).  :func:`decide` runs the rules in one fixed order and
stops at the first that fails, so every implementation gives the same reason
for the same inputs:

1. state-head freshness, when the caller asks for it (``stale``, ``rollback``);
2. chain shape: length, patient at the root, parent links, ``delegate`` on
   every parent, attenuation (``broken-chain``, ``not-patient-root``,
   ``not-delegable``, ``widened``);
3. revocation of any link by any issuer up the chain (``revoked``);
4. time window of every link (``not-yet-valid``, ``expired``);
5. audience and action of the last link (``wrong-audience``,
   ``action-not-granted``);
6. for a document: the scope of *every* link (``out-of-scope``), then the
   patient's private restrictions (``restricted``).

Nodes answer steps 6's refusals exactly as a missing document (spec [CAP-12]):
the reason is for the node's log, not for the requester.

Everything here is pure: ``now`` is an argument, and the revocations, head
and restrictions are the caller's verified records.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final

from .errors import Code, FedrecordError, RemoteProtocolError
from .records import Action, Grant, PrivateRestriction, Revocation, Scope, StateHead
from .signed import Signed, open_record

__all__ = [
    "MAX_CHAIN_LENGTH",
    "DocumentFacts",
    "Decision",
    "Freshness",
    "RevocationSet",
    "decide",
    "decide_from_bytes",
    "document_refusal",
    "scope_matches",
    "narrowing_problem",
]

MAX_CHAIN_LENGTH: Final = 8


@dataclass(frozen=True, kw_only=True)
class DocumentFacts:
    """What the patient's node knows of a document when it checks a scope.

    ``added`` is when the document joined the record (its acceptance), which
    decides whether it is a *past* or *future* document for a grant.
    """

    id: bytes
    category: str
    labels: frozenset[str]
    date: int
    added: int


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The verdict: ``allowed``, or the ``reason`` code of the first rule that failed."""

    allowed: bool
    reason: Code | None = None
    message: str = ""
    grant: Signed[Grant] | None = None

    def __bool__(self) -> bool:
        return self.allowed

    def require(self) -> None:
        """Raise the refusal when not allowed.

        Raises:
            RemoteProtocolError: with ``reason`` and ``message``.
        """
        if not self.allowed:
            assert self.reason is not None
            raise RemoteProtocolError(self.reason, self.message)


def _deny(reason: Code, message: str) -> Decision:
    return Decision(allowed=False, reason=reason, message=message)


@dataclass(frozen=True, kw_only=True)
class Freshness:
    """The state head a grantee must hold to use a grant (spec [HEAD-4]).

    Attributes:
        head: the newest signed head the verifier holds, or None.
        highest_seq: the highest head sequence number it has ever seen.
        max_age: how old, in seconds, the head may be at ``now``.
    """

    head: Signed[StateHead] | None
    highest_seq: int
    max_age: int


@dataclass
class RevocationSet:
    """Revoked grant ids with who revoked them, built from verified revocation records."""

    revokers: dict[bytes, set[str]] = field(default_factory=dict)

    @classmethod
    def from_records(cls, revocations: Iterable[Signed[Revocation]]) -> RevocationSet:
        result = cls()
        for revocation in revocations:
            result.add(revocation)
        return result

    def add(self, revocation: Signed[Revocation]) -> None:
        self.revokers.setdefault(revocation.record.grant, set()).add(revocation.signer)

    def revoked_by(self, grant_id: bytes) -> set[str]:
        return self.revokers.get(grant_id, set())

    def revoked_link(self, chain: Sequence[Signed[Grant]]) -> Signed[Grant] | None:
        """The first link of ``chain`` revoked by an issuer up the chain, or None ([CAP-7]).

        The issuers up a link are the signers of that link and of the links
        before it; a revocation signed by anyone else, the link's own audience
        included, is void.  The chain's shape is not checked here (see :func:`decide`).
        """
        return _revoked_link(chain, self.revokers)


def decide(
    chain: Sequence[Signed[Grant]],
    *,
    patient: str,
    requester: str,
    action: Action | str,
    now: int,
    revocations: RevocationSet | Mapping[bytes, set[str]] | None = None,
    freshness: Freshness | None = None,
    document: DocumentFacts | None = None,
    restrictions: Sequence[Signed[PrivateRestriction]] = (),
) -> Decision:
    """Decide whether ``requester`` may do ``action`` (on ``document``) under ``chain``.

    Args:
        chain: signature-verified grants, root first.
        patient: the did of the patient whose record this is.
        requester: the did of the node making the request.
        action: the action asked for.
        now: the current time, in seconds since the epoch.
        revocations: verified revocations known to the verifier.
        freshness: the state head requirement, or None where the verifier is
            the patient's own node (its state is its own).
        document: the document asked for, if any.
        restrictions: the patient's private restrictions; those not signed by
            the patient have no effect.

    Returns:
        A :class:`Decision`; never raises for a refusal.
    """
    action = action.value if isinstance(action, Action) else action
    revokers = revocations.revokers if isinstance(revocations, RevocationSet) else (revocations or {})

    if freshness is not None:
        stale = _freshness_problem(freshness, patient, now)
        if stale is not None:
            return stale

    shape = _chain_problem(chain, patient)
    if shape is not None:
        return shape

    revoked = _revoked_link(chain, revokers)
    if revoked is not None:
        return _deny(Code.REVOKED, f"grant {revoked.id.hex()[:16]} was revoked")

    for link in chain:
        grant = link.record
        if now < grant.nbf:
            return _deny(Code.NOT_YET_VALID, f"grant {link.id.hex()[:16]} is valid from {grant.nbf}")
        if now >= grant.exp:
            return _deny(Code.EXPIRED, f"grant {link.id.hex()[:16]} expired at {grant.exp}")

    leaf = chain[-1]
    if leaf.record.audience != requester:
        return _deny(Code.WRONG_AUDIENCE, "the grant was issued to another node")
    if action not in leaf.record.actions:
        return _deny(Code.ACTION_NOT_GRANTED, f"the grant does not allow {action!r}")

    if document is not None:
        refusal = document_refusal(chain, document, patient=patient, restrictions=restrictions)
        if refusal is not None:
            return refusal

    return Decision(allowed=True, grant=leaf)


def document_refusal(
    chain: Sequence[Signed[Grant]],
    document: DocumentFacts,
    *,
    patient: str,
    restrictions: Sequence[Signed[PrivateRestriction]] = (),
) -> Decision | None:
    """The last step of :func:`decide`: why ``document`` is out of an allowed chain's reach, or None.

    For a chain :func:`decide` allowed without a document, at the same time: a reader of many
    documents (a listing, a batch) decides the chain once, then each document with this.

    Returns:
        A refusal (``out-of-scope`` or ``restricted``), or None when the chain reaches the document.
    """
    for link in chain:
        if not scope_matches(link.record.scope, document, link.record.iat):
            return _deny(Code.OUT_OF_SCOPE, "the document is outside the grant")
    chain_ids = {link.id for link in chain}
    # Every audience up the chain, not the requester alone: a restriction naming a node follows the
    # grants it delegates, or the node could read what is hidden from it through a key of its own.
    audiences = {link.record.audience for link in chain}
    for signed_restriction in restrictions:
        if signed_restriction.signer != patient:
            continue
        if _restriction_hides(signed_restriction.record, chain_ids, audiences, document):
            return _deny(Code.RESTRICTED, "the patient keeps this document from this grant")
    return None


def decide_from_bytes(
    chain: Sequence[bytes],
    *,
    head: bytes | None = None,
    highest_seq: int = 0,
    max_head_age: int | None = None,
    **kwargs: object,
) -> Decision:
    """:func:`decide` on received bytes: a record that does not open is a refusal with its code.

    Args:
        chain: encoded grants, root first.
        head: the encoded state head, if freshness is required.
        highest_seq: the highest head sequence number seen before.
        max_head_age: require a head no older than this many seconds.
        kwargs: the other arguments of :func:`decide`.
    """
    try:
        grants = [open_record(encoded, Grant) for encoded in chain]
        freshness = None
        if max_head_age is not None:
            signed_head = open_record(head, StateHead) if head is not None else None
            freshness = Freshness(head=signed_head, highest_seq=highest_seq, max_age=max_head_age)
    except FedrecordError as exc:
        return _deny(exc.code, exc.message)
    return decide(grants, freshness=freshness, **kwargs)  # type: ignore[arg-type]


def _revoked_link(chain: Sequence[Signed[Grant]], revokers: Mapping[bytes, set[str]]) -> Signed[Grant] | None:
    issuers: set[str] = set()
    for link in chain:
        issuers.add(link.signer)
        # Any issuer up the chain may revoke; a revocation by anyone else is void.
        if revokers.get(link.id, set()) & issuers:
            return link
    return None


def _freshness_problem(freshness: Freshness, patient: str, now: int) -> Decision | None:
    head = freshness.head
    # A head the patient did not sign says nothing about the patient's state.
    if head is None or head.signer != patient:
        return _deny(Code.STALE, "no state head from the patient")
    if head.record.seq < freshness.highest_seq:
        return _deny(Code.ROLLBACK, f"state head {head.record.seq} is older than {freshness.highest_seq}")
    if now - head.record.iat > freshness.max_age:
        return _deny(Code.STALE, f"state head is older than {freshness.max_age} s")
    return None


def _chain_problem(chain: Sequence[Signed[Grant]], patient: str) -> Decision | None:
    if not 1 <= len(chain) <= MAX_CHAIN_LENGTH:
        return _deny(Code.BROKEN_CHAIN, f"a chain has 1 to {MAX_CHAIN_LENGTH} grants")
    root = chain[0]
    if root.signer != patient:
        return _deny(Code.NOT_PATIENT_ROOT, "the first grant is not issued by the patient")
    if root.record.parent is not None:
        return _deny(Code.BROKEN_CHAIN, "the first grant names a parent")
    for parent, child in pairwise(chain):
        if child.record.parent != parent.id or child.signer != parent.record.audience:
            return _deny(Code.BROKEN_CHAIN, "a grant is not issued by its parent's audience")
        if Action.DELEGATE not in parent.record.actions:
            return _deny(Code.NOT_DELEGABLE, "a parent grant does not allow delegation")
        problem = narrowing_problem(child.record, parent.record)
        if problem is not None:
            return _deny(Code.WIDENED, problem)
    return None


def narrowing_problem(child: Grant, parent: Grant) -> str | None:
    """Why ``child`` is not a narrowing of ``parent``, or None (spec [CAP-6])."""
    if not set(child.actions) <= set(parent.actions):
        return "a delegated grant adds actions"
    if child.nbf < parent.nbf or child.exp > parent.exp:
        return "a delegated grant outlives its parent"
    if child.purpose != parent.purpose:
        return "a delegated grant changes the purpose"
    return _scope_narrowing_problem(child.scope, parent.scope)


def _scope_narrowing_problem(child: Scope, parent: Scope) -> str | None:
    if child.ids is not None and not parent.selects and not set(child.ids) <= set(parent.ids or ()):
        return "a delegated grant names documents its parent does not"
    if not child.selects:
        return None
    if not parent.selects or (child.future and not parent.future):
        return "a delegated grant selects documents its parent does not"
    for name, kid_values, parent_values in (
        ("categories", child.categories, parent.categories),
        ("labels", child.labels, parent.labels),
    ):
        if parent_values is not None and (kid_values is None or not set(kid_values) <= set(parent_values)):
            return f"a delegated grant widens {name}"
    if parent.since is not None and (child.since is None or child.since < parent.since):
        return "a delegated grant starts its date window earlier"
    if parent.until is not None and (child.until is None or child.until > parent.until):
        return "a delegated grant ends its date window later"
    return None


def scope_matches(scope: Scope, document: DocumentFacts, issued_at: int) -> bool:
    """Whether ``document`` is in ``scope`` for a grant issued at ``issued_at`` (spec [CAP-20])."""
    if scope.ids is not None and document.id in scope.ids:
        return True
    if not (scope.past and document.added <= issued_at) and not (scope.future and document.added > issued_at):
        return False
    if scope.categories is not None and document.category not in scope.categories:
        return False
    if scope.labels is not None and not document.labels.intersection(scope.labels):
        return False
    if scope.since is not None and document.date < scope.since:
        return False
    return scope.until is None or document.date < scope.until


def _restriction_hides(
    restriction: PrivateRestriction, chain_ids: set[bytes], audiences: set[str], document: DocumentFacts
) -> bool:
    applies = bool(restriction.grants and chain_ids.intersection(restriction.grants)) or bool(
        restriction.audiences and audiences.intersection(restriction.audiences)
    )
    if not applies:
        return False
    return (
        bool(restriction.labels and document.labels.intersection(restriction.labels))
        or bool(restriction.categories and document.category in restriction.categories)
        or bool(restriction.ids and document.id in restriction.ids)
    )
