"""Range-based set reconciliation (spec section 16): the two sides end with the differences, and nothing more.

The initiator and a stateless responder talk through :func:`reconcile`, which
counts the round trips and the bytes of every message as sent.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrecord.core import cbor
from fedrecord.core.errors import Code, LocalProtocolError, RemoteProtocolError
from fedrecord.core.reconcile import (
    DEFAULT_PARAMS,
    ID_SIZE,
    NEGENTROPY_PARAMS,
    Bound,
    Item,
    Mode,
    Params,
    Reconciler,
    SortedItems,
    decode_message,
    fingerprint,
    respond,
)


def items(n: int, seed: int, *, start: int = 1_700_000_000, spread: int = 10**6) -> list[Item]:
    rnd = random.Random(seed)
    return [(start + rnd.randrange(spread), rnd.randbytes(ID_SIZE)) for _ in range(n)]


def reconcile(
    ours: list[Item], theirs: list[Item], params: Params = DEFAULT_PARAMS
) -> tuple[Reconciler, int, list[bytes]]:
    """Run a whole reconciliation; (initiator, round trips, every message the responder sent)."""
    initiator = Reconciler(SortedItems(ours), params)
    responder_items = SortedItems(theirs)
    replies = []
    message = initiator.initiate()
    round_trips = 0
    while message is not None:
        assert round_trips < 100, "reconciliation does not converge"
        reply = respond(responder_items, message, params)
        replies.append(reply)
        round_trips += 1
        message = initiator.receive(reply)
    return initiator, round_trips, replies


def differences(ours: list[Item], theirs: list[Item]) -> tuple[set[bytes], set[bytes]]:
    mine, other = {i for _, i in ours}, {i for _, i in theirs}
    return other - mine, mine - other


def test_identical_sets_take_one_round_trip() -> None:
    base = items(5000, 1)
    initiator, round_trips, replies = reconcile(base, base)
    assert round_trips == 1 and not initiator.need and not initiator.have
    assert initiator.bytes_sent + sum(map(len, replies)) < 100


@pytest.mark.parametrize("params", [Params(), NEGENTROPY_PARAMS], ids=["ours", "negentropy"])
def test_one_difference_in_a_large_set_takes_three_round_trips(params: Params) -> None:
    base = items(20_000, 2)
    for ours, theirs in ((base, base[:-1]), (base[:-1], base), (base[1:], base)):
        initiator, round_trips, _ = reconcile(ours, theirs, params)
        assert round_trips <= 3
        assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)


def test_many_differences_both_ways_and_fewer_bytes_than_negentropy() -> None:
    base = items(100_000, 3)  # the benchmark's d = 1,000 case: 500 on each side
    ours, theirs = base[1000:] + base[:500], base[1000:] + base[500:1000]
    costs = {}
    for name, params in (("ours", Params()), ("negentropy", NEGENTROPY_PARAMS)):
        initiator, _, replies = reconcile(ours, theirs, params)
        assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)
        costs[name] = initiator.bytes_sent + sum(map(len, replies))
    assert costs["ours"] <= 1000 * 400 + 2000
    assert costs["ours"] < 0.6 * costs["negentropy"]


def test_small_and_empty_sides() -> None:
    base = items(3000, 4)
    for ours, theirs in (([], base), (base, []), ([], []), (base[:5], base[3:40]), (base, base[:10])):
        initiator, _, _ = reconcile(ours, theirs)
        assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)


def test_a_small_message_cap_takes_more_rounds_but_converges() -> None:
    base = items(6000, 5)
    ours, theirs = base[:4000], base[2000:]
    params = Params(max_message=4096)
    initiator, round_trips, replies = reconcile(ours, theirs, params)
    assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)
    assert round_trips > 3 and all(len(r) <= params.max_message for r in replies)


def test_equal_timestamps_are_told_apart_by_id() -> None:
    same_second = [(1_700_000_000, bytes([i]) * ID_SIZE) for i in range(200)]
    initiator, _, _ = reconcile(same_second[:150], same_second[50:])
    assert (set(initiator.need), set(initiator.have)) == differences(same_second[:150], same_second[50:])


item_sets = st.lists(
    st.tuples(st.integers(0, 50), st.binary(min_size=ID_SIZE, max_size=ID_SIZE)), max_size=120, unique=True
)


@settings(max_examples=200, deadline=None)
@given(
    common=item_sets,
    only_ours=item_sets,
    only_theirs=item_sets,
    threshold=st.integers(1, 40),
    cap=st.sampled_from([4096, 131072]),
)
def test_reconciliation_finds_exactly_the_differences(
    common: list[Item], only_ours: list[Item], only_theirs: list[Item], threshold: int, cap: int
) -> None:
    ours, theirs = common + only_ours, common + only_theirs
    params = Params(branching=4, id_list_threshold=threshold, max_message=cap)
    initiator, _, _ = reconcile(ours, theirs, params)
    assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)


@settings(max_examples=100, deadline=None)
@given(visible=item_sets, hidden=item_sets, ours=item_sets)
def test_the_responder_never_reveals_an_id_outside_its_view(
    visible: list[Item], hidden: list[Item], ours: list[Item]
) -> None:
    # The responder answers from the requester's view only; ids outside it appear in no message.
    outside = {i for _, i in hidden} - {i for _, i in visible}
    _, _, replies = reconcile(ours, visible, Params(branching=4, id_list_threshold=8))
    for reply in replies:
        for r in decode_message(reply, max_size=1 << 20).ranges:
            listed = {r.payload[i : i + ID_SIZE] for i in range(0, len(r.payload), ID_SIZE)}
            assert r.mode not in (Mode.ID_LIST, Mode.DIFF) or not listed & outside


def test_index_updates_keep_fingerprints_right() -> None:
    base = items(500, 6)
    index = SortedItems(base[:400])
    for item in base[400:]:
        assert index.add(*item)
    assert not index.add(*base[0])
    for item in base[:100]:
        assert index.remove(*item)
    assert not index.remove(*base[0])
    fresh = SortedItems(base[100:])
    assert len(index) == len(fresh) == 400
    assert index.fingerprint(0, 400, 16) == fresh.fingerprint(0, 400, 16)
    assert index.fingerprint(17, 233, 12) == fresh.fingerprint(17, 233, 12)


def test_fingerprint_binds_sum_and_count() -> None:
    assert fingerprint(5, 1, 16) != fingerprint(5, 2, 16)
    assert fingerprint(5, 1, 16) == fingerprint(5 + 2**256, 1, 16)
    assert len(fingerprint(0, 0, 8)) == 8


def test_bad_items_and_params_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        SortedItems([(1, b"short")])
    with pytest.raises(LocalProtocolError):
        SortedItems([(-1, bytes(32))])
    for bad in ({"branching": 1}, {"fp_len": 4}, {"prefix_len": 40}, {"max_message": 10}):
        with pytest.raises(LocalProtocolError):
            Params(**bad)  # type: ignore[arg-type]
    # A list, or a split, that would not fit in half a message: one answer could outgrow the cap.
    for bad in ({"id_list_threshold": 4096}, {"id_list_threshold": 65}, {"branching": 24}):
        with pytest.raises(LocalProtocolError):
            Params(max_message=4096, **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("ours, theirs", [(0, 300), (300, 0), (150, 300)])
def test_every_message_fits_the_cap_at_the_widest_parameters_it_allows(ours: int, theirs: int) -> None:
    # [SYNC-9]: the first range of an answer is always sent, so no single answer may outgrow the cap.
    params = Params(branching=23, id_list_threshold=64, max_message=4096)
    base = items(300, 12)
    initiator = Reconciler(SortedItems(base[:ours]), params)
    responder_items = SortedItems(base[300 - theirs :])
    message: bytes | None = initiator.initiate()
    while message is not None:
        assert len(message) <= params.max_message
        reply = respond(responder_items, message, params)
        assert len(reply) <= params.max_message
        message = initiator.receive(reply)
    assert (set(initiator.need), set(initiator.have)) == differences(base[:ours], base[300 - theirs :])


def _fp(ids: list[bytes], fp_len: int = 12) -> bytes:
    return fingerprint(sum(int.from_bytes(i, "little") for i in ids), len(ids), fp_len)


def test_a_diff_for_another_range_than_the_one_listed_is_out_of_order() -> None:
    # The initiator listed [start, end); a diff for [(15, ''), end) shares only the upper bound.
    mine = items(5, 13)
    initiator = Reconciler(SortedItems(mine))
    initiator.initiate()
    reply = cbor.encode([0, 12, 8, [[15, b"", 0], [None, b"", 4, b"", b"\x00", _fp([i for _, i in mine])]]])
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.receive(reply)
    assert caught.value.code is Code.OUT_OF_ORDER and not initiator.need and not initiator.have


def test_a_diff_for_a_range_listed_two_messages_ago_is_out_of_order() -> None:
    mine = sorted(items(10, 14))
    ids = [i for _, i in mine]
    middle = Bound(mine[5][0], b"")
    initiator = Reconciler(SortedItems(mine), Params(id_list_threshold=8))
    initiator.initiate()  # one fingerprint of the 10
    split = [[middle.timestamp, b"", 1, bytes(12)], [None, b"", 1, bytes(12)]]
    # Both halves differ: the initiator lists each half (5 items, under the threshold of 8).
    listing = decode_message(initiator.receive(cbor.encode([0, 12, 8, split])) or b"", max_size=1 << 20)
    assert [r.mode for r in listing.ranges] == [Mode.ID_PREFIXES, Mode.ID_PREFIXES]
    # The first half is left unanswered (skip) and the second differs again: listed again, alone.
    initiator.receive(cbor.encode([0, 12, 8, [[middle.timestamp, b"", 0], [None, b"", 1, bytes(12)]]]))
    late = [[middle.timestamp, b"", 4, b"", b"\x00", _fp(ids[:5])], [None, b"", 0]]
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.receive(cbor.encode([0, 12, 8, late]))
    assert caught.value.code is Code.OUT_OF_ORDER and not initiator.need and not initiator.have


def _message(*ranges: list[object], fp_len: int = 16, prefix_len: int = 8, version: int = 0) -> bytes:
    return cbor.encode([version, fp_len, prefix_len, list(ranges)])


BAD_MESSAGES = {
    "not-an-array": (cbor.encode({"v": 0}), Code.MALFORMED),
    "version": (_message([None, b"", 0], version=1), Code.UNSUPPORTED_VERSION),
    "fp-len": (_message([None, b"", 0], fp_len=4), Code.MALFORMED),
    "no-ranges": (cbor.encode([0, 16, 8, []]), Code.MALFORMED),
    "unknown-mode": (_message([None, b"", 9]), Code.MALFORMED),
    "fingerprint-length": (_message([None, b"", 1, b"short"]), Code.MALFORMED),
    "partial-id": (_message([None, b"", 3, b"123"]), Code.MALFORMED),
    "skip-with-payload": (_message([None, b"", 0, b""]), Code.MALFORMED),
    "not-ending-at-end": (_message([5, b"", 0]), Code.OUT_OF_ORDER),
    "end-in-the-middle": (_message([None, b"", 0], [5, b"", 0]), Code.OUT_OF_ORDER),
    "bounds-not-increasing": (_message([10, b"\x05", 0], [0, b"\x05", 0], [None, b"", 0]), Code.OUT_OF_ORDER),
    "long-prefix": (_message([1, bytes(33), 0], [None, b"", 0]), Code.MALFORMED),
    "negative-delta": (_message([-1, b"", 0], [None, b"", 0]), Code.MALFORMED),
    "diff-to-responder": (_message([None, b"", 4, b"", b"", bytes(16)]), Code.OUT_OF_ORDER),
    "diff-without-check": (_message([None, b"", 4, b"", b""]), Code.MALFORMED),
    "non-canonical": (bytes.fromhex("84 00 10 08 81 83 f6 40 18 00".replace(" ", "")), Code.NON_CANONICAL),
}


@pytest.mark.parametrize("name", sorted(BAD_MESSAGES))
def test_bad_messages_are_refused_with_their_code(name: str) -> None:
    data, code = BAD_MESSAGES[name]
    with pytest.raises(RemoteProtocolError) as caught:
        respond(SortedItems(items(50, 7)), data)
    assert caught.value.code is code


def test_oversized_message_is_refused() -> None:
    params = Params(max_message=4096)
    data = _message([None, b"", 3, bytes(8 * 600)])
    with pytest.raises(RemoteProtocolError) as caught:
        respond(SortedItems(items(10, 8)), data, params)
    assert caught.value.code is Code.TOO_LARGE


def test_initiator_refuses_answers_it_never_asked_for() -> None:
    initiator = Reconciler(SortedItems(items(100, 9)))  # enough to start with a fingerprint, not a list
    initiator.initiate()
    unasked_diff = _message([None, b"", 4, b"", b"", bytes(12)], fp_len=12)
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.receive(unasked_diff)
    assert caught.value.code is Code.OUT_OF_ORDER
    prefixes_to_initiator = _message([None, b"", 3, b""])
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.receive(prefixes_to_initiator)
    assert caught.value.code is Code.OUT_OF_ORDER


def test_bounds_round_trip_through_messages() -> None:
    assert Bound(5, b"\x01").key < Bound(5, b"\x02").key < Bound(6).key < Bound(None).key


def test_ids_sharing_a_prefix_are_listed_again_whole() -> None:
    # Two ids with the same 8-byte prefix look alike in a prefix list; the diff's fingerprint shows it.
    shared = bytes(8)
    ours = [(7, shared + bytes([1]) * 24), (9, bytes([5]) * 32)]
    theirs = [(7, shared + bytes([2]) * 24), (9, bytes([5]) * 32)]
    initiator, round_trips, _ = reconcile(ours, theirs)
    assert (set(initiator.need), set(initiator.have)) == differences(ours, theirs)
    assert round_trips == 2


def test_a_diff_stretched_over_more_than_the_listed_range_is_refused() -> None:
    # A responder answers a listed 5-item range with a failing diff from the start of the space: were it
    # taken, the initiator would list again, with whole ids, everything below it, past its cap.
    base = items(10_000, 15)
    initiator = Reconciler(SortedItems(base))
    initiator.initiate()
    ts = sorted(base)[5000][0]
    listed = initiator.receive(cbor.encode([0, 12, 8, [[ts, b"", 0], [5, b"", 1, bytes(12)], [None, b"", 0]]]))
    assert listed is not None and decode_message(listed, max_size=1 << 20).ranges[1].mode is Mode.ID_PREFIXES
    stretched = cbor.encode([0, 12, 8, [[ts + 5, b"", 4, b"", bytes(1), bytes(12)], [None, b"", 0]]])
    with pytest.raises(RemoteProtocolError) as caught:
        initiator.receive(stretched)
    assert caught.value.code is Code.OUT_OF_ORDER
