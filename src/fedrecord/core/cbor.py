"""Strict deterministic CBOR (RFC 8949 section 4.2.1), the encoding of every wire object.

Theory of operation
-------------------
Encoding is cbor2's ``canonical=True`` after a type check: with text-string map
keys (and small unsigned integers 0..23 inside COSE headers) cbor2's
length-first key order equals section 4.2.1's bytewise order, so the output is
the core deterministic encoding.

Decoding untrusted bytes must refuse everything cbor2 accepts by default
(spec [CBOR-1] .. [CBOR-11]).  It runs in two passes so the common case stays
in C:

1. *Fast path*: cbor2's C decoder with indefinite lengths and duplicate keys
   off, a walk that checks the types and the order of map keys, and a
   re-encoding (cbor2 always writes shortest heads) that must give the
   received bytes back.  Every rule the spec states is either enforced by one
   of those three steps or makes the re-encoding differ.
2. *Reference path*, only when the fast path refused: :func:`_Reader` is a
   small pure-Python strict decoder that states each rule once, in the order
   of the spec, and names the first one broken.  It is also the executable
   form of the spec's algorithm and the oracle of the differential tests.
"""

from __future__ import annotations

from typing import Any, Final

import cbor2

from .errors import Code, LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_RECORD_SIZE",
    "MAX_DEPTH",
    "COSE_SIGN1_TAG",
    "encode",
    "decode",
]

MAX_RECORD_SIZE: Final = 65_536
"""Default size cap of one wire object, in bytes (spec [CBOR-1])."""

MAX_DEPTH: Final = 16
"""Maximum nesting of arrays and maps (spec [CBOR-7])."""

COSE_SIGN1_TAG: Final = 18

_UINT_MAX: Final = 2**64 - 1
_NINT_MIN: Final = -(2**64)
_MAX_HEADER_KEY: Final = 23


def encode(value: Any, *, int_keys: bool = False) -> bytes:
    """Encode ``value`` in core deterministic CBOR.

    Args:
        value: ints, bytes, str, bool, None, lists/tuples, dicts with text
            keys (small unsigned int keys 0..23 when ``int_keys``), and
            ``cbor2.CBORTag`` for the tags the protocol names.
        int_keys: allow unsigned integer map keys 0..23 (COSE header maps).

    Raises:
        LocalProtocolError: ``unsupported-type`` for floats, undefined, simple
            values, out-of-range integers or map keys the protocol forbids.
    """
    _check_encodable(value, int_keys, 0)
    return cbor2.dumps(value, canonical=True)


def _check_encodable(value: Any, int_keys: bool, depth: int) -> None:
    # The same depth rule as decoding: a container nested in 16 others is refused.
    if depth >= MAX_DEPTH and isinstance(value, (list, tuple, dict)):
        raise LocalProtocolError(Code.TOO_DEEP, "value nested too deeply to encode")
    if value is None or isinstance(value, (bool, bytes, str)):
        return
    if isinstance(value, int):
        if not _NINT_MIN <= value <= _UINT_MAX:
            raise LocalProtocolError(Code.UNSUPPORTED_TYPE, "integer outside 64 bits")
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            # Byte and text strings inline: an answer's array holds hundreds of them (records, streams).
            kind = type(item)
            if kind is not bytes and kind is not str:
                _check_encodable(item, int_keys, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not _is_allowed_key(key, int_keys):
                raise LocalProtocolError(Code.INVALID_MAP_KEY, f"map key {key!r} not allowed")
            kind = type(item)
            if kind is not bytes and kind is not str:
                _check_encodable(item, int_keys, depth + 1)
        return
    if isinstance(value, cbor2.CBORTag) and value.tag == COSE_SIGN1_TAG and depth == 0:
        _check_encodable(value.value, int_keys, depth)
        return
    raise LocalProtocolError(Code.UNSUPPORTED_TYPE, f"cannot encode {type(value).__name__}")


def _is_allowed_key(key: object, int_keys: bool) -> bool:
    if isinstance(key, str):
        return True
    return int_keys and isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= _MAX_HEADER_KEY


def decode(
    data: bytes,
    *,
    max_size: int = MAX_RECORD_SIZE,
    allow_sign1_tag: bool = False,
    int_keys: bool = False,
) -> Any:
    """Decode one strict, deterministic CBOR item from untrusted bytes.

    Args:
        data: the received bytes, all of which must be one item.
        max_size: the size cap, checked before anything is parsed.
        allow_sign1_tag: accept tag 18 (COSE_Sign1) on the outermost item.
        int_keys: map keys are unsigned integers 0..23 (COSE header maps)
            instead of text strings.

    Returns:
        The decoded value: int, bytes, str, bool, None, list, dict, or a
        ``cbor2.CBORTag`` with tag 18 at the top when allowed.

    Raises:
        RemoteProtocolError: with the code of the first rule broken, in the
            order of spec section 3.2 ([CBOR-13]).
    """
    if len(data) > max_size:
        raise RemoteProtocolError(Code.TOO_LARGE, f"{len(data)} bytes exceeds the cap of {max_size}")
    if type(data) is not bytes:
        data = bytes(data)
    try:
        value = cbor2.loads(data, allow_indefinite=False, allow_duplicate_keys=False, max_depth=MAX_DEPTH + 1)
    except Exception:  # noqa: BLE001 - any cbor2 refusal is diagnosed by the reference path
        value = _REFUSED
    if (
        value is not _REFUSED
        and _well_typed(value, allow_sign1_tag, int_keys, 0)
        and cbor2.dumps(value) == data
    ):
        # Inside a tag cbor2 gives tuples and frozendicts: callers treat them
        # as sequences and mappings.
        return value
    return _Reader(data, allow_sign1_tag, int_keys).read_all()


_REFUSED: Final = object()


def _well_typed(value: Any, allow_tag: bool, int_keys: bool, depth: int) -> bool:
    """Fast-path type walk: only the protocol's data model, within the depth cap.

    Scalars are tested inline rather than by recursion: this walk runs on
    every record received and most items are scalars.
    """
    kind = type(value)
    if kind is list or kind is tuple:
        if depth >= MAX_DEPTH:
            return False
        for item in value:
            t = type(item)
            if t is str or t is bytes or t is bool or item is None:
                continue
            if t is int:
                if not _NINT_MIN <= item <= _UINT_MAX:
                    return False
            elif not _well_typed(item, False, int_keys, depth + 1):
                return False
        return True
    if kind is dict or kind is cbor2.frozendict:
        if depth >= MAX_DEPTH:
            return False
        # Keys must come in bytewise order of their encodings: for integers
        # 0..23 that is numeric order; for text, shorter UTF-8 first, then
        # bytewise.  Checking it here lets the re-encoding below be cbor2's
        # plain (order-preserving) mode, three times faster than canonical.
        previous_int = -1
        previous_text, previous_length = b"", -1
        for key, item in value.items():
            if int_keys:
                if type(key) is not int or not previous_int < key <= _MAX_HEADER_KEY:
                    return False
                previous_int = key
            else:
                if type(key) is not str:
                    return False
                encoded_key = key.encode()
                length = len(encoded_key)
                if length < previous_length or (length == previous_length and encoded_key <= previous_text):
                    return False
                previous_text, previous_length = encoded_key, length
            t = type(item)
            if t is str or t is bytes or t is bool or item is None:
                continue
            if t is int:
                if not _NINT_MIN <= item <= _UINT_MAX:
                    return False
            elif not _well_typed(item, False, int_keys, depth + 1):
                return False
        return True
    if kind is int:
        return bool(_NINT_MIN <= value <= _UINT_MAX)
    if kind is bytes or kind is str or kind is bool or value is None:
        return True
    if kind is cbor2.CBORTag and allow_tag and value.tag == COSE_SIGN1_TAG:
        return _well_typed(value.value, False, int_keys, depth)
    return False


class _Reader:
    """Reference strict decoder: one pass, first broken rule wins (spec section 3.2)."""

    def __init__(self, data: bytes, allow_sign1_tag: bool, int_keys: bool) -> None:
        self.data = data
        self.pos = 0
        self.allow_sign1_tag = allow_sign1_tag
        self.int_keys = int_keys

    def fail(self, code: Code, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(code, f"{what} at byte {self.pos}")

    def read_all(self) -> Any:
        value = self.item(0)
        if self.pos != len(self.data):
            raise self.fail(Code.TRAILING_BYTES, f"{len(self.data) - self.pos} bytes after the item")
        return value

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(Code.MALFORMED, "input ends inside an item")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def head(self) -> tuple[int, int, int]:
        """Read an initial byte and its argument: (major type, additional info, argument)."""
        start = self.pos
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info == 31:
            self.pos = start
            if major in (2, 3, 4, 5):
                raise self.fail(Code.INDEFINITE_LENGTH, "indefinite-length item")
            raise self.fail(Code.MALFORMED, "break or indefinite marker out of place")
        if info > 27:
            self.pos = start
            raise self.fail(Code.MALFORMED, f"reserved additional information {info}")
        if major == 7:
            # Simple values and floats carry no length argument to minimise.
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        argument = int.from_bytes(self.take(1 << (info - 24)), "big")
        smallest = (0, 24, 0x100, 0x10000, 0x100000000)[info - 23]
        if argument < smallest:
            self.pos = start
            raise self.fail(Code.NON_CANONICAL, "integer or length not in its shortest form")
        return major, info, argument

    def item(self, depth: int) -> Any:
        start = self.pos
        major, info, argument = self.head()
        if major == 0:
            return argument
        if major == 1:
            return -1 - argument
        if major == 2:
            return self.take(argument)
        if major == 3:
            raw = self.take(argument)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                self.pos = start
                raise self.fail(Code.INVALID_UTF8, "text string is not valid UTF-8") from None
        if major in (4, 5):
            if depth >= MAX_DEPTH:
                self.pos = start
                raise self.fail(Code.TOO_DEEP, f"nesting deeper than {MAX_DEPTH}")
            if major == 4:
                return [self.item(depth + 1) for _ in range(argument)]
            return self.map_body(argument, depth)
        if major == 6:
            if not (self.allow_sign1_tag and depth == 0 and start == 0 and argument == COSE_SIGN1_TAG):
                self.pos = start
                raise self.fail(Code.FORBIDDEN_TAG, f"tag {argument} not allowed here")
            return cbor2.CBORTag(argument, self.item(depth))
        # Major type 7: only false, true and null belong to the data model.
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        self.pos = start
        raise self.fail(Code.UNSUPPORTED_TYPE, "floats, undefined and simple values are not allowed")

    def map_body(self, count: int, depth: int) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        previous = b""
        seen: set[bytes] = set()
        for _ in range(count):
            key_start = self.pos
            key = self.item(depth + 1)
            encoded_key = self.data[key_start : self.pos]
            if not _is_allowed_key(key, self.int_keys) or (self.int_keys and isinstance(key, str)):
                self.pos = key_start
                raise self.fail(Code.INVALID_MAP_KEY, "map key of a type the protocol forbids")
            if encoded_key in seen:
                self.pos = key_start
                raise self.fail(Code.DUPLICATE_KEY, f"duplicate map key {key!r}")
            seen.add(encoded_key)
            if encoded_key < previous:
                self.pos = key_start
                raise self.fail(Code.NON_CANONICAL, "map keys not in bytewise order")
            previous = encoded_key
            result[key] = self.item(depth + 1)
        return result
