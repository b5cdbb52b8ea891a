"""The Wycheproof-style file layout of our vectors, and CBOR diagnostic notation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from fedrecord import __version__

SCHEMA = "fedrecord_vectors_v0.schema.json"


def fixed_seed(name: str) -> bytes:
    """The 32-byte seed called ``name``: SHA-256("fedrecord-vectors:" || name)."""
    return hashlib.sha256(b"fedrecord-vectors:" + name.encode()).digest()


def diag(value: Any) -> str:
    """RFC 8949 section 8 diagnostic notation of a decoded value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(diag(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{diag(k)}: {diag(v)}" for k, v in value.items()) + "}"
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({diag(value.value)})"
    raise TypeError(f"no diagnostic notation for {type(value).__name__}")


def diag_bytes(data: bytes) -> str:
    """Diagnostic notation of encoded CBOR, with embedded COSE headers and payloads expanded."""
    value = cbor2.loads(data)
    if isinstance(value, cbor2.CBORTag) and value.tag == 18 and len(value.value) == 4:
        protected, unprotected, payload, signature = value.value
        inner = [
            f"<< {diag(cbor2.loads(protected))} >>" if protected else "h''",
            diag(dict(unprotected)),
            f"<< {diag(cbor2.loads(payload))} >>",
            diag(signature),
        ]
        return f"18([{', '.join(inner)}])"
    return diag(value)


@dataclass
class VectorFile:
    """One vector file being built: header, flag notes, groups of tests."""

    algorithm: str
    header: list[str]
    notes: dict[str, dict[str, str]]
    groups: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 1

    def group(self, kind: str, description: str, **extra: Any) -> list[dict[str, Any]]:
        tests: list[dict[str, Any]] = []
        self.groups.append({"type": kind, "description": description, **extra, "tests": tests})
        return tests

    def case(
        self,
        tests: list[dict[str, Any]],
        comment: str,
        *,
        result: str,
        flags: Iterable[str] = (),
        error: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        flags = list(flags)
        unknown = [flag for flag in flags if flag not in self.notes]
        if unknown:
            raise ValueError(f"flags without notes: {unknown}")
        if (result == "valid") != (error is None):
            raise ValueError(f"case {comment!r}: a valid case has no error, an invalid one has one")
        test = {"tcId": self._next_id, "comment": comment, "flags": flags, "result": result}
        if error is not None:
            test["error"] = error
        test.update(fields)
        tests.append(test)
        self._next_id += 1
        return test

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "schema": SCHEMA,
            "generatorVersion": __version__,
            "numberOfTests": self._next_id - 1,
            "header": self.header,
            "notes": self.notes,
            "testGroups": self.groups,
        }
