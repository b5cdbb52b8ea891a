"""The project's CDDL, compiled once per root rule, for the tests that validate wire bytes against it."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pycddl

SPEC = Path(__file__).resolve().parent.parent / "spec"
CDDL = (SPEC / "fedrecord.cddl").read_text()


@cache
def schema(rule: str | None = None) -> pycddl.Schema:
    """The CDDL with ``rule`` as its first rule (the file's own first rule when None)."""
    return pycddl.Schema(CDDL if rule is None else f"root = {rule}\n{CDDL}")


def valid(rule: str | None, data: bytes) -> bool:
    try:
        schema(rule).validate_cbor(data)
    except pycddl.ValidationError:
        return False
    return True
