"""Range-based set reconciliation: which records one side has that the other lacks (spec section 16).

Theory of operation
-------------------
Both sides hold a set of *items* -- ``(timestamp, id)`` pairs, a record's
``iat`` and its 32-byte id -- in the order of timestamp, then id.  The
*initiator* (the node that syncs) sends a fingerprint of the whole range;
the *responder* compares it with its own.  A range whose fingerprints agree
holds the same items on both sides and is skipped; one that differs is split
into ``branching`` sub-ranges, each sent with its fingerprint, or, once it
holds fewer than ``id_list_threshold`` items, listed.  The two sides take turns
until nothing differs: for ``n`` items and ``d`` differences that takes
about ``log_branching(n / threshold)`` messages for the ranges around each
difference, and a constant number when nothing differs (A. Meyer,
"Range-Based Set Reconciliation", arXiv 2212.13567; the negentropy protocol).

Fingerprints combine associatively.  A range's fingerprint is a hash of the
sum of its ids (as 256-bit little-endian integers, modulo 2**256) and of its
item count, so an index that keeps running sums (:class:`SortedItems`)
answers any range with two subtractions and one hash, never a rescan.

Who learns what.  The lists are asymmetric so that the initiator always ends
up with whole ids of what it lacks (it fetches them by id):

* the responder lists a small range with whole ids (``ID_LIST``); the
  initiator computes both differences for it;
* the initiator lists a small range with id *prefixes* (``ID_PREFIXES``,
  ``prefix_len`` bytes each, a quarter of the bytes at the default); the
  responder answers with a ``DIFF``: the whole ids it has there that the
  initiator lacks, and a bitmap over the initiator's prefixes marking those
  it lacks itself.

At the end :attr:`Reconciler.need` holds the ids the responder has and the
initiator lacks, :attr:`Reconciler.have` those the initiator has and the
responder lacks.  The responder keeps no state between messages (each reply
is a function of its items and the message), so a node can answer each round
as an independent HTTP request.

Messages are strict CBOR (spec [SYNC-4]), capped at ``max_message`` bytes: a
side whose answer would exceed the cap stops and sends the rest of the space
as one fingerprint, which the peer takes up in the next round.

This module is pure: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from . import cbor
from .errors import Code, LocalProtocolError, RemoteProtocolError

__all__ = [
    "SYNC_VERSION",
    "ID_SIZE",
    "Mode",
    "Params",
    "DEFAULT_PARAMS",
    "NEGENTROPY_PARAMS",
    "Bound",
    "Item",
    "SortedItems",
    "fingerprint",
    "Reconciler",
    "respond",
]

SYNC_VERSION: Final = 0
ID_SIZE: Final = 32
FINGERPRINT_DOMAIN: Final = b"fedrecord/v0/sync-fingerprint"
_MODULUS: Final = 1 << 256
_MAX_TIMESTAMP: Final = (1 << 64) - 1
# The size estimate of [SYNC-9]: a range's head (array, timestamp delta, mode, byte-string heads) is
# counted as 24 bytes; a range with a whole id as its payload as 56; a sub-range of a split at most 88.
_RANGE_COST: Final = 24
_ID_RANGE_COST: Final = _RANGE_COST + ID_SIZE
_SPLIT_RANGE_COST: Final = _ID_RANGE_COST + 32
_MESSAGE_COST: Final = 16
_RESERVE: Final = 64

Item = tuple[int, bytes]
"""``(timestamp, id)``: an unsigned 64-bit timestamp and a 32-byte record id."""


class Mode(IntEnum):
    """What a message says about one range (spec [SYNC-4])."""

    SKIP = 0
    FINGERPRINT = 1
    ID_LIST = 2
    ID_PREFIXES = 3
    DIFF = 4


@dataclass(frozen=True)
class Params:
    """The tunables of one side.  Only ``fp_len`` and ``prefix_len`` travel (in every message).

    Raises:
        LocalProtocolError: ``malformed`` from the constructor for a value out of its range.
    """

    branching: int = 16
    fp_len: int = 12
    id_list_threshold: int = 32
    prefix_len: int = 8
    max_message: int = 128 * 1024

    def __post_init__(self) -> None:
        checks = (
            (2 <= self.branching <= 1024, "branching is 2..1024"),
            (8 <= self.fp_len <= 32, "fp_len is 8..32 bytes"),
            (1 <= self.id_list_threshold <= 4096, "id_list_threshold is 1..4096"),
            (8 <= self.prefix_len <= ID_SIZE, "prefix_len is 8..32 bytes"),
            (4096 <= self.max_message <= 16 << 20, "max_message is 4 KiB..16 MiB"),
            # Any one range's answer then fits in half a message, so every message makes progress ([SYNC-9]).
            (
                self.id_list_threshold * ID_SIZE <= self.max_message // 2,
                "id_list_threshold x 32 is at most half of max_message",
            ),
            (
                self.branching * _SPLIT_RANGE_COST <= self.max_message // 2,
                "branching x 88 is at most half of max_message",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise LocalProtocolError(Code.MALFORMED, message)


DEFAULT_PARAMS: Final = Params()
NEGENTROPY_PARAMS: Final = Params(branching=16, fp_len=16, id_list_threshold=32, prefix_len=32)
"""negentropy's choices (16 buckets, 16-byte fingerprints, lists under 32 items, whole ids), for comparison."""


@dataclass(frozen=True, order=True)
class Bound:
    """The lower end of a range: items ``>= (timestamp, prefix padded with zeros)`` are above it.

    ``timestamp is None`` is the end of the space (above every item).
    """

    timestamp: int | None
    prefix: bytes = b""

    @property
    def key(self) -> Item:
        if self.timestamp is None:
            return (_MAX_TIMESTAMP + 1, b"")
        return (self.timestamp, self.prefix.ljust(ID_SIZE, b"\0"))


END: Final = Bound(None)
START: Final = Bound(0)


def fingerprint(total: int, count: int, fp_len: int) -> bytes:
    """The fingerprint of a range whose ids sum to ``total`` (mod 2**256) over ``count`` items."""
    digest = hashlib.sha256(FINGERPRINT_DOMAIN)
    digest.update((total % _MODULUS).to_bytes(32, "little"))
    digest.update(count.to_bytes(8, "big"))
    return digest.digest()[:fp_len]


class SortedItems:
    """An index of items for reconciliation: sorted keys and running sums of their ids.

    Build it once from the items (any order), then :meth:`add` and
    :meth:`remove` as the set changes; fingerprints of any range cost two
    binary searches and one hash.

    Raises:
        LocalProtocolError: ``malformed`` for an item that is not an unsigned
            64-bit timestamp and a 32-byte id.
    """

    def __init__(self, items: Iterable[Item] = (), *, presorted: bool = False) -> None:
        keys = list(items)
        for timestamp, item_id in keys:
            _check_item(timestamp, item_id)
        if not presorted:
            keys.sort()
        # Duplicates are one item.
        self._keys: list[Item] = [k for k, _ in itertools.groupby(keys)] if keys else []
        self._sums: list[int] = [0]
        self._sums.extend(itertools.accumulate(int.from_bytes(k[1], "little") for k in self._keys))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, item: object) -> bool:
        if type(item) is not tuple or len(item) != 2:
            return False
        key: Item = item
        at = bisect.bisect_left(self._keys, key)
        return at < len(self._keys) and self._keys[at] == key

    def add(self, timestamp: int, item_id: bytes) -> bool:
        """Insert one item; false when it was there already."""
        _check_item(timestamp, item_id)
        key = (timestamp, item_id)
        at = bisect.bisect_left(self._keys, key)
        if at < len(self._keys) and self._keys[at] == key:
            return False
        self._keys.insert(at, key)
        value = int.from_bytes(item_id, "little")
        self._sums.insert(at + 1, self._sums[at] + value)
        for i in range(at + 2, len(self._sums)):
            self._sums[i] += value
        return True

    def remove(self, timestamp: int, item_id: bytes) -> bool:
        """Take one item out; false when it was not there."""
        key = (timestamp, item_id)
        at = bisect.bisect_left(self._keys, key)
        if at >= len(self._keys) or self._keys[at] != key:
            return False
        del self._keys[at]
        value = int.from_bytes(item_id, "little")
        del self._sums[at + 1]
        for i in range(at + 1, len(self._sums)):
            self._sums[i] -= value
        return True

    def position(self, bound: Bound) -> int:
        """The index of the first item at or above ``bound``."""
        if bound.timestamp is None:
            return len(self._keys)
        return bisect.bisect_left(self._keys, bound.key)

    def fingerprint(self, lo: int, hi: int, fp_len: int) -> bytes:
        """The fingerprint of the items at positions ``lo`` (included) to ``hi`` (excluded)."""
        return fingerprint(self._sums[hi] - self._sums[lo], hi - lo, fp_len)

    def items(self, lo: int, hi: int) -> Sequence[Item]:
        return self._keys[lo:hi]

    def item(self, position: int) -> Item:
        return self._keys[position]


def _check_item(timestamp: object, item_id: object) -> None:
    if (
        type(timestamp) is not int
        or not 0 <= timestamp <= _MAX_TIMESTAMP
        or type(item_id) is not bytes
        or len(item_id) != ID_SIZE
    ):
        raise LocalProtocolError(Code.MALFORMED, "an item is an unsigned 64-bit timestamp and a 32-byte id")


# --- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """One range of a message: from the previous range's upper bound up to ``upper`` (excluded)."""

    upper: Bound
    mode: Mode
    payload: bytes = b""  # the fingerprint, the ids or the prefixes
    lacks: bytes = b""  # DIFF only: the bitmap over the peer's prefixes
    check: bytes = b""  # DIFF only: the responder's fingerprint of the range


@dataclass
class Message:
    """A decoded reconciliation message (spec [SYNC-3])."""

    fp_len: int
    prefix_len: int
    ranges: list[Range] = field(default_factory=list)

    def encode(self) -> bytes:
        encoded: list[Any] = []
        previous = 0
        for r in self.ranges:
            if r.upper.timestamp is None:
                head: list[Any] = [None, b""]
            else:
                head = [r.upper.timestamp - previous, r.upper.prefix]
                previous = r.upper.timestamp
            tail: list[Any] = [int(r.mode)]
            if r.mode is not Mode.SKIP:
                tail.append(r.payload)
            if r.mode is Mode.DIFF:
                tail += [r.lacks, r.check]
            encoded.append(head + tail)
        return cbor.encode([SYNC_VERSION, self.fp_len, self.prefix_len, encoded])


def decode_message(data: bytes, *, max_size: int) -> Message:
    """Decode and check a message: versions, lengths, bounds strictly increasing and ending at the end.

    Raises:
        RemoteProtocolError: the CBOR codes; ``unsupported-version``;
            ``malformed`` for a wrong shape or length; ``out-of-order`` for
            bounds that do not increase or do not end at the end of the space.
    """
    value = cbor.decode(data, max_size=max_size)
    if type(value) is not list or len(value) != 4:
        raise RemoteProtocolError(Code.MALFORMED, "a sync message is [version, fp_len, prefix_len, ranges]")
    version, fp_len, prefix_len, ranges = value
    if version != SYNC_VERSION or type(version) is not int:
        raise RemoteProtocolError(Code.UNSUPPORTED_VERSION, f"sync message version {version!r} is not 0")
    if type(fp_len) is not int or not 8 <= fp_len <= 32:
        raise RemoteProtocolError(Code.MALFORMED, "fp_len is 8..32")
    if type(prefix_len) is not int or not 8 <= prefix_len <= ID_SIZE:
        raise RemoteProtocolError(Code.MALFORMED, "prefix_len is 8..32")
    if type(ranges) is not list or not ranges:
        raise RemoteProtocolError(Code.MALFORMED, "a sync message has at least one range")
    message = Message(fp_len, prefix_len)
    previous_ts, previous = 0, START
    for i, item in enumerate(ranges):
        upper = _decode_bound(item, previous_ts, last=i == len(ranges) - 1)
        if not previous.key < upper.key and not (i == 0 and upper.timestamp is None):
            raise RemoteProtocolError(Code.OUT_OF_ORDER, f"range {i}: bounds must increase")
        message.ranges.append(_decode_range(item, upper, fp_len, prefix_len, i))
        if upper.timestamp is not None:
            previous_ts = upper.timestamp
        previous = upper
    return message


def _decode_bound(item: Any, previous_ts: int, *, last: bool) -> Bound:
    if type(item) is not list or len(item) < 3:
        raise RemoteProtocolError(Code.MALFORMED, "a range is [timestamp delta, prefix, mode, ...]")
    delta, prefix = item[0], item[1]
    if type(prefix) is not bytes or len(prefix) > ID_SIZE:
        raise RemoteProtocolError(Code.MALFORMED, "a bound prefix is at most 32 bytes")
    if delta is None:
        if not last or prefix:
            raise RemoteProtocolError(Code.OUT_OF_ORDER, "only the last range ends at the end of the space")
        return END
    if last:
        raise RemoteProtocolError(Code.OUT_OF_ORDER, "the last range must end at the end of the space")
    if type(delta) is not int or delta < 0 or previous_ts + delta > _MAX_TIMESTAMP:
        raise RemoteProtocolError(Code.MALFORMED, "a timestamp delta is an unsigned integer")
    return Bound(previous_ts + delta, prefix)


def _decode_range(item: list[Any], upper: Bound, fp_len: int, prefix_len: int, i: int) -> Range:
    mode_value = item[2]
    if type(mode_value) is not int or mode_value not in Mode._value2member_map_:
        raise RemoteProtocolError(Code.MALFORMED, f"range {i}: unknown mode {mode_value!r}")
    mode = Mode(mode_value)
    want = {Mode.SKIP: 3, Mode.DIFF: 6}.get(mode, 4)
    if len(item) != want or not all(type(x) is bytes for x in item[3:]):
        raise RemoteProtocolError(Code.MALFORMED, f"range {i}: {mode.name} has the wrong fields")
    payload = item[3] if len(item) > 3 else b""
    lacks, check = (item[4], item[5]) if mode is Mode.DIFF else (b"", b"")
    if mode is Mode.DIFF and len(check) != fp_len:
        raise RemoteProtocolError(Code.MALFORMED, f"range {i}: a diff's fingerprint is {fp_len} bytes")
    unit = {Mode.FINGERPRINT: None, Mode.ID_PREFIXES: prefix_len}.get(mode, ID_SIZE)
    if mode is Mode.FINGERPRINT and len(payload) != fp_len:
        raise RemoteProtocolError(Code.MALFORMED, f"range {i}: a fingerprint is {fp_len} bytes")
    if unit is not None and len(payload) % unit:
        raise RemoteProtocolError(Code.MALFORMED, f"range {i}: the list is not a whole number of entries")
    return Range(upper, mode, payload, lacks, check)


# --- the state machine ---------------------------------------------------------------------------------------


class _Writer:
    """Builds one outgoing message, merging skips and keeping under the size cap."""

    def __init__(self, params: Params, fp_len: int, prefix_len: int) -> None:
        self.message = Message(fp_len, prefix_len)
        self.params = params
        self.size = _MESSAGE_COST
        self.full = False
        self.substantive = False

    def add(self, r: Range) -> None:
        ranges = self.message.ranges
        if r.mode is Mode.SKIP and ranges and ranges[-1].mode is Mode.SKIP:
            ranges[-1] = r  # consecutive skips are one skip
            return
        ranges.append(r)
        # An upper bound of the range's CBOR: heads and a 9-byte timestamp delta at most.
        self.size += _RANGE_COST + len(r.upper.prefix) + len(r.payload) + len(r.lacks) + len(r.check)
        if r.mode is not Mode.SKIP:
            self.substantive = True

    def room_for(self, extra: int) -> bool:
        # Keep room for the closing fingerprint of the rest.
        return self.size + extra + _RESERVE <= self.params.max_message


class Reconciler:
    """One side of a reconciliation over ``items`` (the initiator, or a responder through :func:`respond`).

    Usage (initiator)::

        reconciler = Reconciler(items, params)
        message = reconciler.initiate()
        while message is not None:
            message = reconciler.receive(send_to_peer(message))
        reconciler.need, reconciler.have

    Raises (``receive``):
        RemoteProtocolError: a malformed, oversized or out-of-order message,
            or one that answers something this side never asked.
    """

    def __init__(
        self, items: SortedItems, params: Params = DEFAULT_PARAMS, *, initiator: bool = True
    ) -> None:
        self.items = items
        self.params = params
        self.initiator = initiator
        self.need: list[bytes] = []
        self.have: list[bytes] = []
        self.rounds = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        # The ranges listed in the message last sent, by (lower, upper) bound as compared ([SYNC-2]: a
        # prefix padded with zero bytes is the same bound): the ids a DIFF's bitmap
        # refers to.  Only a diff for one of these is an answer; the next message starts a new table.
        self._listed: dict[tuple[Item, Item], list[bytes]] = {}
        self._answered: dict[tuple[Item, Item], list[bytes]] = {}

    def initiate(self) -> bytes:
        """The first message: the whole space as one fingerprint, or listed when it is small."""
        writer = _Writer(self.params, self.params.fp_len, self.params.prefix_len)
        self._describe(writer, START, END, 0, len(self.items), split=False)
        return self._sent(writer.message.encode())

    def receive(self, data: bytes) -> bytes | None:
        """Take the peer's message; the next one to send, or ``None`` when reconciliation is complete."""
        self.bytes_received += len(data)
        self.rounds += 1
        message = decode_message(data, max_size=self.params.max_message)
        writer = self._process(message)
        if not writer.substantive:
            return None
        return self._sent(writer.message.encode())

    def _sent(self, data: bytes) -> bytes:
        self.bytes_sent += len(data)
        return data

    def _process(self, message: Message) -> _Writer:
        writer = _Writer(self.params, message.fp_len, message.prefix_len)
        self._answered, self._listed = self._listed, {}
        lower = START
        lo = 0
        for r in message.ranges:
            hi = self.items.position(r.upper)
            if writer.full:
                pass
            elif writer.substantive and not writer.room_for(self._cost(r, lower, lo, hi, message.fp_len)):
                # Out of room: the rest of the space goes back as one fingerprint, taken up next round.
                writer.full = True
                rest_lo = lo
                writer.add(
                    Range(
                        END,
                        Mode.FINGERPRINT,
                        self.items.fingerprint(rest_lo, len(self.items), message.fp_len),
                    )
                )
            else:
                self._answer(writer, r, lower, lo, hi, message)
            lower, lo = r.upper, hi
        if not writer.full and writer.message.ranges and writer.message.ranges[-1].upper != END:
            writer.add(Range(END, Mode.SKIP))
        return writer

    def _cost(self, r: Range, lower: Bound, lo: int, hi: int, fp_len: int) -> int:
        """The cost of [SYNC-9]: an upper bound of the bytes our answer to ``r`` adds (see ``_Writer.add``)."""
        split = self.params.branching * (_ID_RANGE_COST + fp_len)
        if r.mode is Mode.FINGERPRINT:
            listed = min(hi - lo, self.params.id_list_threshold) * ID_SIZE + _ID_RANGE_COST
            return max(split, listed)
        if r.mode in (Mode.ID_PREFIXES, Mode.ID_LIST) and not self.initiator:
            if self._too_many_to_list(hi - lo):
                return split
            return (hi - lo) * ID_SIZE + len(r.payload) // 8 + _ID_RANGE_COST
        if r.mode is Mode.DIFF and self.initiator:
            # A diff whose check fails is answered with the whole ids of the range listed.
            return len(self._answered.get((lower.key, r.upper.key), ())) * ID_SIZE + _ID_RANGE_COST
        return _ID_RANGE_COST

    def _too_many_to_list(self, count: int) -> bool:
        return count * ID_SIZE > self.params.max_message // 2 and count >= self.params.id_list_threshold

    def _answer(self, writer: _Writer, r: Range, lower: Bound, lo: int, hi: int, message: Message) -> None:
        if r.mode is Mode.SKIP:
            writer.add(Range(r.upper, Mode.SKIP))
        elif r.mode is Mode.FINGERPRINT:
            if self.items.fingerprint(lo, hi, message.fp_len) == r.payload:
                writer.add(Range(r.upper, Mode.SKIP))
            else:
                self._describe(writer, lower, r.upper, lo, hi, split=True, fp_len=message.fp_len)
        elif r.mode is Mode.ID_LIST and self.initiator:
            self._compare_ids(r.payload, lo, hi)
            writer.add(Range(r.upper, Mode.SKIP))
        elif r.mode in (Mode.ID_PREFIXES, Mode.ID_LIST):  # the initiator's list, to the responder
            if self.initiator:
                raise RemoteProtocolError(Code.OUT_OF_ORDER, "only the initiator lists prefixes")
            if self._too_many_to_list(hi - lo):
                # Too many of ours to list in one answer (an initiator that has little): split instead.
                self._describe(writer, lower, r.upper, lo, hi, split=True, fp_len=message.fp_len)
            else:
                unit = message.prefix_len if r.mode is Mode.ID_PREFIXES else ID_SIZE
                writer.add(self._diff(r, lo, hi, unit, message.fp_len))
        else:  # DIFF
            if not self.initiator:
                raise RemoteProtocolError(Code.OUT_OF_ORDER, "only the responder answers with a diff")
            if self._apply_diff(r, lower, message.fp_len):
                writer.add(Range(r.upper, Mode.SKIP))
            else:
                # Two ids shared a prefix: the diff is wrong.  List the range again with whole ids.
                ids = [item_id for _, item_id in self.items.items(lo, hi)]
                self._listed[lower.key, r.upper.key] = ids
                writer.add(Range(r.upper, Mode.ID_LIST, b"".join(ids)))

    def _describe(
        self,
        writer: _Writer,
        lower: Bound,
        upper: Bound,
        lo: int,
        hi: int,
        *,
        split: bool,
        fp_len: int | None = None,
    ) -> None:
        """Our account of the range ``[lower, upper)``: a list when small, else fingerprints."""
        fp_len = fp_len or self.params.fp_len
        count = hi - lo
        # Listed when small; a single item is always listed, or a split could give the same range back.
        if count < max(2, self.params.id_list_threshold):
            ids = [item_id for _, item_id in self.items.items(lo, hi)]
            if self.initiator:
                self._listed[lower.key, upper.key] = ids
                writer.add(
                    Range(upper, Mode.ID_PREFIXES, b"".join(i[: writer.message.prefix_len] for i in ids))
                )
            else:
                writer.add(Range(upper, Mode.ID_LIST, b"".join(ids)))
            return
        if not split:
            writer.add(Range(upper, Mode.FINGERPRINT, self.items.fingerprint(lo, hi, fp_len)))
            return
        buckets = self.params.branching
        start = lo
        for b in range(1, buckets + 1):
            end = lo + count * b // buckets
            if end == start and b < buckets:
                continue  # an empty bucket merges into the next: bounds must increase
            bucket_upper = upper if b == buckets else self._bound_between(end)
            writer.add(Range(bucket_upper, Mode.FINGERPRINT, self.items.fingerprint(start, end, fp_len)))
            start = end

    def _bound_between(self, position: int) -> Bound:
        """The shortest bound above item ``position - 1`` and at or below item ``position``."""
        ts, item_id = self.items.item(position)
        if position == 0:
            return Bound(ts, b"")
        prev_ts, prev_id = self.items.item(position - 1)
        if prev_ts != ts:
            return Bound(ts, b"")
        shared = 0
        while shared < ID_SIZE and prev_id[shared] == item_id[shared]:
            shared += 1
        return Bound(ts, item_id[: shared + 1])

    def _compare_ids(self, payload: bytes, lo: int, hi: int) -> None:
        theirs = {payload[i : i + ID_SIZE] for i in range(0, len(payload), ID_SIZE)}
        ours = {item_id for _, item_id in self.items.items(lo, hi)}
        self.need.extend(sorted(theirs - ours))
        self.have.extend(sorted(ours - theirs))

    def _diff(self, r: Range, lo: int, hi: int, unit: int, fp_len: int) -> Range:
        """Responder: our whole ids the initiator lacks, a bitmap of its entries we lack, our fingerprint."""
        theirs = [r.payload[i : i + unit] for i in range(0, len(r.payload), unit)]
        ours = [item_id for _, item_id in self.items.items(lo, hi)]
        our_prefixes = {item_id[:unit] for item_id in ours}
        their_set = set(theirs)
        extra = b"".join(item_id for item_id in ours if item_id[:unit] not in their_set)
        lacks = bytearray((len(theirs) + 7) // 8)
        for i, prefix in enumerate(theirs):
            if prefix not in our_prefixes:
                lacks[i // 8] |= 1 << (i % 8)
        return Range(r.upper, Mode.DIFF, extra, bytes(lacks), self.items.fingerprint(lo, hi, fp_len))

    def _apply_diff(self, r: Range, lower: Bound, fp_len: int) -> bool:
        """Initiator: take a diff in; false (nothing taken) when it does not add up to the responder's range."""
        listed = self._answered.pop((lower.key, r.upper.key), None)
        if listed is None:
            raise RemoteProtocolError(
                Code.OUT_OF_ORDER, "a diff for a range this side did not list in its last message"
            )
        if len(r.lacks) != (len(listed) + 7) // 8:
            raise RemoteProtocolError(Code.MALFORMED, "the diff's bitmap does not match the listed range")
        ours = set(listed)
        need = [r.payload[i : i + ID_SIZE] for i in range(0, len(r.payload), ID_SIZE)]
        need = [item_id for item_id in need if item_id not in ours]
        have = [item_id for i, item_id in enumerate(listed) if r.lacks[i // 8] >> (i % 8) & 1]
        # What the responder holds there, as this diff says; its fingerprint must be the responder's.
        theirs = (ours - set(have)) | set(need)
        total = sum(int.from_bytes(item_id, "little") for item_id in theirs)
        if fingerprint(total, len(theirs), fp_len) != r.check:
            return False
        self.need.extend(need)
        self.have.extend(have)
        return True


def respond(items: SortedItems, data: bytes, params: Params = DEFAULT_PARAMS) -> bytes:
    """The responder's answer to one message: stateless, so each round can be its own request.

    Returns the reply, which is all skips (one range) when the message left
    nothing to say.

    Raises:
        RemoteProtocolError: as :meth:`Reconciler.receive`.
    """
    responder = Reconciler(items, params, initiator=False)
    message = decode_message(data, max_size=params.max_message)
    writer = responder._process(message)
    if not writer.message.ranges:
        writer.add(Range(END, Mode.SKIP))
    return writer.message.encode()
