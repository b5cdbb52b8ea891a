"""The document life cycle table (core/lifecycle.py; spec 15.5, 15.6, 15.11, [API-27]).

The table is checked as a whole here: every pair it lacks is refused with its
event's code.  The node tests (test_patient_decisions, test_destruction,
test_node_adversarial) check that the nodes follow it over HTTP.
"""

from __future__ import annotations

import itertools

import pytest

from fedrecord.core import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.lifecycle import REFUSALS, TRANSITIONS, DocumentState, Event, kept_state, next_state

STATES: list[DocumentState | None] = [None, *DocumentState]


@pytest.mark.parametrize(("state", "event"), list(itertools.product(STATES, Event)))
def test_every_pair_moves_as_the_table_says_or_is_refused_with_its_events_code(
    state: DocumentState | None, event: Event
) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state(state, event) == TRANSITIONS[(state, event)]
        # The row's column as read (a str) moves the same way.
        assert next_state(None if state is None else state.value, event) == TRANSITIONS[(state, event)]
    else:
        with pytest.raises(RemoteProtocolError) as refused:
            next_state(state, event)
        assert (refused.value.code, refused.value.message) == REFUSALS[event]


def test_the_patients_actions_are_refused_as_a_missing_document() -> None:
    # [CAP-12]: accepting, rejecting or deleting what is not there answers as for a document never held.
    for event in (Event.ACCEPT, Event.REJECT, Event.DELETE):
        assert REFUSALS[event] == (Code.NOT_FOUND, "no such document")
    with pytest.raises(RemoteProtocolError) as refused:
        next_state(DocumentState.ACCEPTED, Event.ACCEPT)
    assert refused.value.code is Code.NOT_FOUND


def test_a_document_held_in_any_state_is_not_deposited_again() -> None:
    # [API-13] step 9: one answer whatever the state, so the answer tells nothing of it.
    for state in DocumentState:
        with pytest.raises(RemoteProtocolError) as refused:
            next_state(state, Event.DEPOSITED)
        assert (refused.value.code, refused.value.message) == (
            Code.REPLAY,
            "this document was already deposited",
        )


def test_every_state_is_reached_and_left() -> None:
    reached = {after for after in TRANSITIONS.values() if after is not None}
    left = {before for before, _event in TRANSITIONS if before is not None}
    assert reached == set(DocumentState)
    # An authored document is never destroyed by the protocol: it is the clinic's legal record.
    assert left == set(DocumentState)
    assert all(
        after is DocumentState.AUTHORED
        for (before, _), after in TRANSITIONS.items()
        if before is DocumentState.AUTHORED
    )


def test_every_event_has_a_move_and_a_refusal() -> None:
    assert {event for _state, event in TRANSITIONS} == set(Event)
    assert set(REFUSALS) == set(Event)


def test_a_state_the_table_does_not_know_is_refused_not_raised_as_a_value_error() -> None:
    # A damaged row: refused with the event's code, never a ValueError that would become a 500.
    with pytest.raises(RemoteProtocolError) as refused:
        next_state("archived", Event.ACCEPT)
    assert refused.value.code is Code.NOT_FOUND


def test_kept_state_refuses_a_move_that_leaves_no_row() -> None:
    assert kept_state(None, Event.DEPOSITED) is DocumentState.INBOX
    with pytest.raises(LocalProtocolError):
        kept_state(DocumentState.INBOX, Event.REJECT)


def test_the_spec_table_is_the_code_table() -> None:
    """Spec 15.6's table of a document's states says what TRANSITIONS holds, row for row."""
    from pathlib import Path

    spec = (Path(__file__).resolve().parent.parent / "spec" / "fedrecord.md").read_text()
    header = "| state | event | state after | rule |"
    rows = spec[spec.index(header) :].split("\n\n", 1)[0].splitlines()[2:]
    events = {
        "a deposit passes every check": Event.DEPOSITED,
        "the patient accepts": Event.ACCEPT,
        "the patient rejects": Event.REJECT,
        "the patient deletes": Event.DELETE,
        "a clinic writes a document": Event.AUTHOR,
        "a copy is fetched and checked": Event.FETCHED,
        "its own document is fetched under a grant": Event.FETCHED,
        "the patient's tombstone arrives": Event.WITHDRAWN,
        "a grant up its chain is revoked": Event.REVOKED,
    }

    def states(cell: str) -> list[DocumentState | None]:
        words = cell.split(" (", maxsplit=1)[0].replace("`", "").split(" or ")
        return [None if word.strip() == "none" else DocumentState(word.strip()) for word in words]

    written = {}
    for row in rows:
        before, event, after, _rule = (cell.strip() for cell in row.strip("|").split("|"))
        (after_state,) = states(after)
        for state in states(before):
            written[(state, events[event])] = after_state
    assert written == dict(TRANSITIONS)
