"""Vectors for set reconciliation (spec section 16, [SYNC-*]): fingerprints, answers, whole transcripts.

Items are made from fixed seeds: item i of set ``name`` has the id
SHA-256(seed(name) || BE32(i)) and a timestamp drawn from the same digest, so
a second implementation can rebuild them from the ids and timestamps listed
in each case, which are what it replays.
"""

from __future__ import annotations

import hashlib
from typing import Any

from fedrecord.core import cbor
from fedrecord.core.errors import RemoteProtocolError
from fedrecord.core.reconcile import (
    DEFAULT_PARAMS,
    Item,
    Params,
    Reconciler,
    SortedItems,
    fingerprint,
    respond,
)

from .format import VectorFile, fixed_seed

NOTES = {
    "Valid": {"bugType": "BASIC", "description": "A message or transcript as the spec computes it."},
    "EqualTimestamps": {"bugType": "EDGE_CASE", "description": "Items told apart by id alone ([SYNC-2])."},
    "SharedPrefix": {
        "bugType": "EDGE_CASE",
        "description": "Ids that share their first prefix_len bytes: the diff's check fails ([SYNC-6]).",
    },
    "SmallCap": {"bugType": "EDGE_CASE", "description": "Messages cut at the cap ([SYNC-9])."},
    "Malformed": {
        "bugType": "MALFORMED",
        "description": "A message of the wrong shape ([SYNC-4], [SYNC-5]).",
    },
    "OutOfOrder": {
        "bugType": "MODIFIED_SIGNATURE",
        "description": "Bounds that do not increase, or an answer to what was not asked ([SYNC-5], [SYNC-6]).",
    },
    "Version": {"bugType": "FUNCTIONALITY", "description": "A version other than 0 ([SYNC-5])."},
    "TooLarge": {"bugType": "EDGE_CASE", "description": "A message over the cap ([SYNC-5])."},
}


def make_items(name: str, count: int, *, spread: int = 5000) -> list[Item]:
    seed = fixed_seed(f"sync:{name}")
    items = []
    for i in range(count):
        digest = hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
        items.append((1_700_000_000 + int.from_bytes(digest[:4], "big") % spread, digest))
    return items


def _items_json(items: list[Item]) -> list[list[Any]]:
    return [[ts, item_id.hex()] for ts, item_id in sorted(items)]


def _params_json(params: Params) -> dict[str, int]:
    return {
        "branching": params.branching,
        "fpLen": params.fp_len,
        "idListThreshold": params.id_list_threshold,
        "prefixLen": params.prefix_len,
        "maxMessage": params.max_message,
    }


def transcript(initiator_items: list[Item], responder_items: list[Item], params: Params) -> dict[str, Any]:
    """Every message, alternating from the initiator, and what the initiator ends with."""
    initiator = Reconciler(SortedItems(initiator_items), params)
    responder = SortedItems(responder_items)
    messages = []
    message: bytes | None = initiator.initiate()
    while message is not None:
        reply = respond(responder, message, params)
        messages += [message.hex(), reply.hex()]
        message = initiator.receive(reply)
    return {
        "messages": messages,
        "need": sorted(i.hex() for i in initiator.need),
        "have": sorted(i.hex() for i in initiator.have),
    }


def build() -> VectorFile:
    vectors = VectorFile(
        algorithm="fedrecord-sync",
        header=[
            "Set reconciliation (spec section 16). Items are [timestamp, id hex]; messages are hex",
            "of strict CBOR. SyncFingerprint: the fingerprint of all the items ([SYNC-3]).",
            "SyncRespond: the responder's answer to one message over its items, or the error code.",
            "SyncTranscript: every message of a whole reconciliation, initiator first, and the",
            "initiator's need and have at the end ([SYNC-6] to [SYNC-9]).",
            "SyncInitiator: an initiator's first message, then its answer to each of the responder's",
            "messages, or its refusal of the last one ([SYNC-6]).",
        ],
        notes=NOTES,
    )
    base = make_items("base", 150)

    tests = vectors.group("SyncFingerprint", "Fingerprints of item sets ([SYNC-3])")
    for name, items, fp_len in (
        ("empty set", [], 12),
        ("one item", base[:1], 12),
        ("150 items", base, 12),
        ("150 items, 16-byte fingerprint", base, 16),
        ("150 items, 32-byte fingerprint", base, 32),
    ):
        total = sum(int.from_bytes(i, "little") for _, i in items)
        vectors.case(
            tests,
            name,
            result="valid",
            flags=["Valid"],
            items=_items_json(items),
            fpLen=fp_len,
            fingerprint=fingerprint(total, len(items), fp_len).hex(),
        )

    tests = vectors.group("SyncTranscript", "Whole reconciliations between an initiator and a responder")
    same_second = [(1_700_000_000, hashlib.sha256(b"same-second" + bytes([i])).digest()) for i in range(80)]
    shared = bytes(8)
    prefix_twins = (
        [(7, shared + bytes([1]) * 24), (9, bytes([5]) * 32)],
        [(7, shared + bytes([2]) * 24), (9, bytes([5]) * 32)],
    )
    for comment, ours, theirs, params, flags in (
        ("identical sets", base, base, DEFAULT_PARAMS, ["Valid"]),
        ("one item missing on the initiator", base[1:], base, DEFAULT_PARAMS, ["Valid"]),
        ("one item missing on the responder", base, base[:-1], DEFAULT_PARAMS, ["Valid"]),
        ("ten differences each way", base[10:], base[:140], DEFAULT_PARAMS, ["Valid"]),
        ("empty initiator", [], base, DEFAULT_PARAMS, ["Valid"]),
        ("empty responder", base, [], DEFAULT_PARAMS, ["Valid"]),
        ("both empty", [], [], DEFAULT_PARAMS, ["Valid"]),
        (
            "branching 4, lists under 8",
            base[5:],
            base[:-5],
            Params(branching=4, id_list_threshold=8),
            ["Valid"],
        ),
        (
            "equal timestamps",
            same_second[:60],
            same_second[20:],
            Params(id_list_threshold=4),
            ["EqualTimestamps"],
        ),
        ("ids sharing a prefix", prefix_twins[0], prefix_twins[1], DEFAULT_PARAMS, ["SharedPrefix"]),
        ("4 KiB cap", [], base, Params(max_message=4096), ["SmallCap"]),
    ):
        vectors.case(
            tests,
            comment,
            result="valid",
            flags=flags,
            params=_params_json(params),
            initiatorItems=_items_json(ours),
            responderItems=_items_json(theirs),
            **transcript(ours, theirs, params),
        )

    tests = vectors.group("SyncRespond", "A responder's answer to one message, or its refusal")
    responder = base[:100]
    first = Reconciler(SortedItems(base[50:150])).initiate()

    def message(ranges: list[Any], *, fp_len: int = 12, prefix_len: int = 8, version: int = 0) -> bytes:
        return cbor.encode([version, fp_len, prefix_len, ranges])

    valid = [("an initiator's first message", first)]
    for comment, data in valid:
        vectors.case(
            tests,
            comment,
            result="valid",
            flags=["Valid"],
            params=_params_json(DEFAULT_PARAMS),
            responderItems=_items_json(responder),
            message=data.hex(),
            reply=respond(SortedItems(responder), data).hex(),
        )
    invalid = [
        ("not an array", cbor.encode({"v": 0}), "malformed", "Malformed"),
        ("version 1", message([[None, b"", 0]], version=1), "unsupported-version", "Version"),
        ("fp_len 4", message([[None, b"", 0]], fp_len=4), "malformed", "Malformed"),
        ("prefix_len 40", message([[None, b"", 0]], prefix_len=40), "malformed", "Malformed"),
        ("no ranges", cbor.encode([0, 12, 8, []]), "malformed", "Malformed"),
        ("unknown mode 9", message([[None, b"", 9]]), "malformed", "Malformed"),
        ("fingerprint of 5 bytes", message([[None, b"", 1, b"short"]]), "malformed", "Malformed"),
        ("prefix list of 3 bytes", message([[None, b"", 3, b"123"]]), "malformed", "Malformed"),
        ("skip with a payload", message([[None, b"", 0, b""]]), "malformed", "Malformed"),
        ("diff without its check", message([[None, b"", 4, b"", b""]]), "malformed", "Malformed"),
        ("bound prefix of 33 bytes", message([[1, bytes(33), 0], [None, b"", 0]]), "malformed", "Malformed"),
        ("negative delta", message([[-1, b"", 0], [None, b"", 0]]), "malformed", "Malformed"),
        ("last range not at the end", message([[5, b"", 0]]), "out-of-order", "OutOfOrder"),
        ("end bound in the middle", message([[None, b"", 0], [5, b"", 0]]), "out-of-order", "OutOfOrder"),
        (
            "bounds not increasing",
            message([[10, b"\x05", 0], [0, b"\x05", 0], [None, b"", 0]]),
            "out-of-order",
            "OutOfOrder",
        ),
        ("first bound at the start", message([[0, b"", 0], [None, b"", 0]]), "out-of-order", "OutOfOrder"),
        (
            "bounds equal once padded",
            message([[10, b"", 0], [0, b"\x00", 0], [None, b"", 0]]),
            "out-of-order",
            "OutOfOrder",
        ),
        ("end bound with a prefix", message([[None, b"\x01", 0]]), "out-of-order", "OutOfOrder"),
        (
            "a range's bound checked before a later range's mode",
            message([[None, b"", 0], [5, b"", 9]]),
            "out-of-order",
            "OutOfOrder",
        ),
        ("version as text", cbor.encode(["0", 12, 8, [[None, b"", 0]]]), "unsupported-version", "Version"),
        (
            "timestamps past 2^64 - 1",
            message([[2**64 - 1, b"", 0], [1, b"", 0], [None, b"", 0]]),
            "malformed",
            "Malformed",
        ),
        (
            "diff sent to the responder",
            message([[None, b"", 4, b"", b"", bytes(12)]]),
            "out-of-order",
            "OutOfOrder",
        ),
        ("non-canonical integer", bytes.fromhex("8400180c088183f64000"), "non-canonical", "Malformed"),
        ("over the 4 KiB cap", message([[None, b"", 3, bytes(8 * 600)]]), "too-large", "TooLarge"),
    ]
    for comment, data, code, flag in invalid:
        vectors.case(
            tests,
            comment,
            result="invalid",
            flags=[flag],
            error=code,
            params=_params_json(Params(max_message=4096)),
            responderItems=_items_json(responder[:10]),
            message=data.hex(),
        )

    tests = vectors.group("SyncInitiator", "An initiator's answers to a responder's messages, or its refusal")
    mine = sorted(base[:5])
    ids = [item_id for _, item_id in mine]
    every = fingerprint(sum(int.from_bytes(i, "little") for i in ids), len(ids), 12)
    after_first = mine[0][0] + 1
    assert mine[1][0] >= after_first  # the first half holds the first item alone
    split = [[after_first, b"", 1, bytes(12)], [None, b"", 1, bytes(12)]]
    first_half = fingerprint(int.from_bytes(ids[0], "little"), 1, 12)
    rest = fingerprint(sum(int.from_bytes(i, "little") for i in ids[1:]), len(ids) - 1, 12)
    for comment, flags, error, replies in (
        ("a diff that completes", ["Valid"], None, [message([[None, b"", 4, b"", b"\x00", every]])]),
        (
            "a diff for a range sharing only its upper bound with the one listed",
            ["OutOfOrder"],
            "out-of-order",
            [message([[15, b"", 0], [None, b"", 4, b"", b"\x00", every]])],
        ),
        (
            "a diff for a range listed two messages before",
            ["OutOfOrder"],
            "out-of-order",
            [
                message([[None, b"", 1, bytes(12)]]),  # differs: the 5 are listed
                message(split),  # both halves differ again: each half listed
                message([[after_first, b"", 0], [None, b"", 1, bytes(12)]]),  # first left, second listed
                message([[after_first, b"", 4, b"", b"\x00", first_half], [None, b"", 0]]),
            ],
        ),
        (
            "a diff whose bounds equal the listed ones once padded with zero bytes",
            ["Valid"],
            None,
            [
                message([[None, b"", 1, bytes(12)]]),  # differs: the 5 are listed
                message(split),  # both halves differ again: each half listed
                message(
                    [
                        [after_first, b"\x00\x00", 4, b"", b"\x00", first_half],
                        [None, b"", 4, b"", b"\x00", rest],
                    ]
                ),
            ],
        ),
        (
            "a diff whose bitmap does not fit the list",
            ["Malformed"],
            "malformed",
            [message([[None, b"", 4, b"", b"\x00\x00", every]])],
        ),
        (
            "id prefixes sent to the initiator",
            ["OutOfOrder"],
            "out-of-order",
            [message([[None, b"", 3, bytes(8)]])],
        ),
    ):
        vectors.case(
            tests,
            comment,
            result="invalid" if error else "valid",
            flags=flags,
            **({"error": error} if error else {}),
            params=_params_json(Params(id_list_threshold=8)),
            initiatorItems=_items_json(mine),
            replies=[r.hex() for r in replies],
            **initiator_answers(mine, replies, Params(id_list_threshold=8), error),
        )
    return vectors


def initiator_answers(
    items: list[Item], replies: list[bytes], params: Params, error: str | None
) -> dict[str, Any]:
    """The initiator's first message and its answer to each reply (``None`` once complete).

    An invalid case's answers stop before the reply it refuses, which must be the last.
    """
    initiator = Reconciler(SortedItems(items), params)
    answers: list[str | None] = [initiator.initiate().hex()]
    for i, reply in enumerate(replies):
        try:
            answer = initiator.receive(reply)
        except RemoteProtocolError as exc:
            assert error == exc.code.value and i == len(replies) - 1, (error, exc.code, i)
            return {"answers": answers}
        answers.append(None if answer is None else answer.hex())
    assert error is None, error
    return {
        "answers": answers,
        "need": sorted(i.hex() for i in initiator.need),
        "have": sorted(i.hex() for i in initiator.have),
    }
