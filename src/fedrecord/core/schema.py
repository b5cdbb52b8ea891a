"""Declarative wire schema for record payloads.

Every record is a frozen dataclass whose fields carry a :class:`Kind` in their
metadata (the wire key and the value's rules).  From that one declaration the
module derives the payload map, its strict reading (unknown keys, wrong types,
unsorted sets, all refused) and the constructor's validation, so the three
cannot drift apart.  Optional fields are absent from the map, never ``null``
(spec [REC-4]).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from enum import Enum
from itertools import pairwise
from typing import Any, ClassVar, Final, TypeVar

from .errors import Code, LocalProtocolError, RemoteProtocolError, as_remote
from .identity import DID_KEY_PREFIX

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Kind",
    "UInt",
    "Text",
    "Token",
    "Did",
    "Blob",
    "Flag",
    "OneOf",
    "ArrayOf",
    "SetOf",
    "TextMap",
    "Nested",
    "wire",
    "WireObject",
]

PROTOCOL_VERSION: Final = 0
SUPPORTED_VERSIONS: Final = (0,)

_UINT_MAX: Final = 2**63 - 1  # times and sizes stay within a signed 64-bit integer


class Kind:
    """The rules of one field's value.  ``read`` takes a wire value, ``write`` gives one."""

    def check(self, value: Any) -> str | None:
        """A message saying why ``value`` is refused, or None."""
        raise NotImplementedError

    def read(self, value: Any) -> Any:
        problem = self.check(value)
        if problem is not None:
            raise RemoteProtocolError(Code.INVALID_RECORD, problem)
        return value

    def write(self, value: Any) -> Any:
        return value

    def normalise(self, value: Any) -> Any:
        """Bring a locally built value into canonical form (sets sorted)."""
        return value


class UInt(Kind):
    def check(self, value: Any) -> str | None:
        if type(value) is not int or not 0 <= value <= _UINT_MAX:
            return "expected an unsigned integer below 2**63"
        return None

    def read(self, value: Any) -> Any:
        if type(value) is int and 0 <= value <= _UINT_MAX:
            return value
        return super().read(value)


class Text(Kind):
    def __init__(self, max_length: int) -> None:
        self.max_length = max_length

    def check(self, value: Any) -> str | None:
        if type(value) is not str or not 0 < len(value) <= self.max_length:
            return f"expected a non-empty text of at most {self.max_length} characters"
        return None

    def read(self, value: Any) -> Any:
        if type(value) is str and 0 < len(value) <= self.max_length:
            return value
        return super().read(value)


_TOKEN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


class Token(Kind):
    """A label, category or purpose: 1..64 characters from a safe alphabet (spec [REC-7])."""

    def check(self, value: Any) -> str | None:
        if type(value) is not str or not _TOKEN.fullmatch(value):
            return f"{value!r} is not a token ([A-Za-z0-9][A-Za-z0-9._:-]{{0,63}})"
        return None

    def read(self, value: Any) -> Any:
        if type(value) is str and _TOKEN.fullmatch(value):
            return value
        return super().read(value)


class Did(Kind):
    """A did:key identifier; its key is checked when it is used, not here."""

    def check(self, value: Any) -> str | None:
        if type(value) is not str or not value.startswith(DID_KEY_PREFIX) or not 48 <= len(value) <= 64:
            return "expected an Ed25519 did:key identifier"
        return None

    def read(self, value: Any) -> Any:
        if type(value) is str and 48 <= len(value) <= 64 and value.startswith(DID_KEY_PREFIX):
            return value
        return super().read(value)


class Blob(Kind):
    def __init__(self, *, size: int | None = None, max_size: int | None = None) -> None:
        self.size = size
        self.max_size = max_size

    def read(self, value: Any) -> Any:
        if (
            type(value) is bytes
            and (self.size is None or len(value) == self.size)
            and (self.max_size is None or len(value) <= self.max_size)
        ):
            return value
        return super().read(value)

    def check(self, value: Any) -> str | None:
        if type(value) is not bytes:
            return "expected a byte string"
        if self.size is not None and len(value) != self.size:
            return f"expected {self.size} bytes, got {len(value)}"
        if self.max_size is not None and len(value) > self.max_size:
            return f"byte string longer than {self.max_size}"
        return None


class Flag(Kind):
    def check(self, value: Any) -> str | None:
        return None if type(value) is bool else "expected true or false"

    def read(self, value: Any) -> Any:
        return value if type(value) is bool else super().read(value)


class OneOf(Kind):
    def __init__(self, *values: str) -> None:
        self.values = frozenset(values)

    def check(self, value: Any) -> str | None:
        return (
            None if type(value) is str and value in self.values else f"expected one of {sorted(self.values)}"
        )

    def normalise(self, value: Any) -> Any:
        return value.value if isinstance(value, Enum) else value


class ArrayOf(Kind):
    """An ordered array of items of one kind."""

    def __init__(self, item: Kind, *, max_items: int = 64, non_empty: bool = False) -> None:
        self.item = item
        self.max_items = max_items
        self.non_empty = non_empty

    def shape_problem(self, items: tuple[Any, ...] | list[Any]) -> str | None:
        """What is wrong with the array as a whole (its items already checked), or None."""
        if len(items) > self.max_items or (self.non_empty and not items):
            return f"expected {'1' if self.non_empty else '0'} to {self.max_items} items"
        return None

    def check(self, value: Any) -> str | None:
        if type(value) not in (list, tuple):
            return "expected an array"
        for item in value:
            problem = self.item.check(item)
            if problem is not None:
                return problem
        return self.shape_problem(value)

    def read(self, value: Any) -> Any:
        if type(value) is not list and type(value) is not tuple:
            raise RemoteProtocolError(Code.INVALID_RECORD, "expected an array")
        read_item = self.item.read
        items = tuple([read_item(item) for item in value]) if value else ()  # most labels are none
        problem = self.shape_problem(items)
        if problem is not None:
            raise RemoteProtocolError(Code.INVALID_RECORD, problem)
        return items

    def write(self, value: Any) -> Any:
        return [self.item.write(item) for item in value]

    def normalise(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(self.item.normalise(item) for item in value)
        return value


class SetOf(ArrayOf):
    """A set: on the wire an array in ascending order without duplicates (spec [REC-5])."""

    def shape_problem(self, items: tuple[Any, ...] | list[Any]) -> str | None:
        problem = super().shape_problem(items)
        if problem is None and len(items) > 1 and any(a >= b for a, b in pairwise(items)):
            return "set items must be in ascending order without duplicates"
        return problem

    def normalise(self, value: Any) -> Any:
        if isinstance(value, (list, tuple, set, frozenset)):
            return tuple(sorted({self.item.normalise(item) for item in value}))
        return value


class TextMap(Kind):
    """A small map of token keys to short texts (FHIR element values)."""

    def __init__(self, *, max_items: int = 16, max_length: int = 256) -> None:
        self.max_items = max_items
        self.value_kind = Text(max_length)

    def check(self, value: Any) -> str | None:
        # Locally built values are kept as sorted (key, text) pairs, wire values are maps.
        pairs = list(value.items()) if isinstance(value, Mapping) else value
        if not isinstance(pairs, (list, tuple)) or len(pairs) > self.max_items:
            return f"expected a map of at most {self.max_items} entries"
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                return "expected a map of tokens to texts"
            problem = Token().check(pair[0]) or self.value_kind.check(pair[1])
            if problem is not None:
                return problem
        return None

    def read(self, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise RemoteProtocolError(Code.INVALID_RECORD, "expected a map")
        return tuple(sorted(super().read(value).items()))

    def write(self, value: Any) -> Any:
        return dict(value)

    def normalise(self, value: Any) -> Any:
        return tuple(sorted(value.items())) if isinstance(value, Mapping) else value


class Nested(Kind):
    """A map that is itself a :class:`WireObject`."""

    def __init__(self, cls: type[WireObject]) -> None:
        self.cls = cls

    def check(self, value: Any) -> str | None:
        return None if isinstance(value, self.cls) else f"expected {self.cls.__name__}"

    def read(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise RemoteProtocolError(Code.INVALID_RECORD, f"{self.cls.__name__} must be a map")
        return self.cls.from_wire(value)

    def write(self, value: Any) -> Any:
        return value.to_wire()


def wire(key: str, kind: Kind, *, optional: bool = False, default: Any = dataclasses.MISSING) -> Any:
    """Declare a dataclass field carried on the wire under ``key``."""
    if optional and default is dataclasses.MISSING:
        default = None
    return dataclasses.field(default=default, metadata={"key": key, "kind": kind, "optional": optional})


W = TypeVar("W", bound="WireObject")
_MISSING: Final = object()


class WireObject:
    """Base of every wire map: derives encoding, strict decoding and validation from the fields.

    Subclasses are ``@dataclass(frozen=True, kw_only=True)`` and may add
    cross-field rules in :meth:`validate` (raising LocalProtocolError).
    """

    _fields_cache: ClassVar[tuple[tuple[str, str, Kind, bool], ...]]
    _defaults_cache: ClassVar[dict[str, Any]]
    _read_plan: ClassVar[tuple[tuple[str, str, Any, bool], ...]]

    @classmethod
    def _wire_fields(cls) -> tuple[tuple[str, str, Kind, bool], ...]:
        cached = cls.__dict__.get("_fields_cache")
        if cached is None:
            fields = [f for f in dataclasses.fields(cls) if "key" in f.metadata]  # type: ignore[arg-type]
            cached = tuple(
                (f.name, f.metadata["key"], f.metadata["kind"], f.metadata["optional"]) for f in fields
            )
            cls._fields_cache = cached
            cls._defaults_cache = {f.name: f.default for f in fields if f.metadata["optional"]}
        return cached

    def __post_init__(self) -> None:
        for name, key, kind, optional in self._wire_fields():
            value = getattr(self, name)
            if value is None and optional:
                continue
            value = kind.normalise(value)
            object.__setattr__(self, name, value)
            problem = kind.check(value)
            if problem is not None:
                raise LocalProtocolError(Code.INVALID_RECORD, f"{type(self).__name__}.{key}: {problem}")
        self.validate()

    def validate(self) -> None:
        """Cross-field rules.  Raises LocalProtocolError(invalid-record)."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key, kind, _optional in self._wire_fields():
            value = getattr(self, name)
            if value is not None:
                out[key] = kind.write(value)
        return out

    @classmethod
    def _make_read_plan(cls) -> tuple[tuple[str, str, Any, bool], ...]:
        # Bound read methods, looked up once per class: from_wire runs for every record received.
        plan = tuple((name, key, kind.read, optional) for name, key, kind, optional in cls._wire_fields())
        cls._read_plan = plan
        return plan

    @classmethod
    def from_wire(cls: type[W], payload: dict[str, Any]) -> W:
        """Read a decoded map strictly.

        Raises:
            RemoteProtocolError: ``invalid-record`` for a missing or unknown
                key or a value that breaks its field's rules.
        """
        values: dict[str, Any] = {}
        plan = cls.__dict__.get("_read_plan") or cls._make_read_plan()
        for name, key, read, optional in plan:
            value = payload.get(key, _MISSING)
            if value is _MISSING:
                if not optional:
                    raise RemoteProtocolError(Code.INVALID_RECORD, f"{cls.__name__}: missing field {key!r}")
                continue
            try:
                values[name] = read(value)
            except RemoteProtocolError as exc:
                raise RemoteProtocolError(exc.code, f"{cls.__name__}.{key}: {exc.message}") from None
        if len(values) != len(payload):
            known = {key for _n, key, _k, _o in cls._wire_fields()}
            unknown = sorted(str(k) for k in payload if k not in known)
            raise RemoteProtocolError(Code.INVALID_RECORD, f"{cls.__name__}: unknown fields {unknown}")
        # Each field was checked by its kind while reading; build the object
        # without checking them a second time, then apply the cross-field rules.
        obj = cls.__new__(cls)
        # A frozen dataclass without slots keeps its fields in __dict__: fill it
        # in one step instead of one object.__setattr__ per field.
        obj.__dict__.update(cls._defaults_cache)
        obj.__dict__.update(values)
        try:
            obj.validate()
        except LocalProtocolError as exc:
            raise as_remote(exc) from None
        return obj
