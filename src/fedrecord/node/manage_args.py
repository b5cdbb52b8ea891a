"""The arguments of a ``manage-request``, read and checked the same way for both roles ([API-51], [API-61]).

Each reader returns the argument or raises ``malformed`` naming it, so that an
op checks all of its arguments before it calls the node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from fedrecord.core import Code, FedrecordError, RemoteProtocolError
from fedrecord.core.identity import public_key_from_did
from fedrecord.core.schema import Token

Node = TypeVar("Node")
Op = Callable[[Node, Mapping[str, Any], int], Awaitable[dict[str, Any]]]


def malformed(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(Code.MALFORMED, message)


def op_of(body: Mapping[str, Any], ops: Mapping[str, Op[Node]]) -> Op[Node]:
    """The op ``body`` names, one of ``ops``.

    Raises:
        RemoteProtocolError: ``malformed`` for an absent, non-text or unknown ``op``.
    """
    op = body.get("op")
    run = ops.get(op) if type(op) is str else None
    if run is None:
        raise malformed(f"op is one of {', '.join(ops)}")
    return run


def record_id(body: Mapping[str, Any], key: str) -> bytes:
    value = body.get(key)
    if type(value) is not bytes or len(value) != 32:
        raise malformed(f"{key} is a 32-byte id")
    return value


def text(body: Mapping[str, Any], key: str, max_length: int, *, default: str | None = None) -> str:
    """A text of 1 to ``max_length`` characters; required unless ``default`` is given."""
    value = body.get(key, default)
    if type(value) is not str or not 0 < len(value) <= max_length:
        raise malformed(f"{key} is a text of 1 to {max_length} characters")
    return value


def optional_text(body: Mapping[str, Any], key: str, max_length: int) -> str | None:
    """As :func:`text`, or None when the argument is absent."""
    return text(body, key, max_length) if body.get(key) is not None else None


def flag(body: Mapping[str, Any], key: str, *, required: bool = False) -> bool:
    """A boolean; false when absent unless ``required``."""
    value = body.get(key, None if required else False)
    if type(value) is not bool:
        raise malformed(f"{key} is a boolean")
    return value


def token(body: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = body.get(key, default)
    if Token().check(value) is not None:
        raise malformed(f"{key} is a token")
    assert type(value) is str
    return value


def tokens(body: Mapping[str, Any], key: str, *, max_items: int, required: bool = False) -> list[str]:
    """An array of at most ``max_items`` tokens; empty when absent unless ``required``."""
    if key not in body and not required:
        return []
    value = body.get(key)
    if (
        type(value) is not list
        or len(value) > max_items
        or any(Token().check(item) is not None for item in value)
    ):
        raise malformed(f"{key} is an array of at most {max_items} tokens")
    return value


def did(body: Mapping[str, Any], key: str) -> str:
    """The did:key of an Ed25519 key."""
    value = body.get(key)
    try:
        if type(value) is not str:
            raise malformed("not a text")
        public_key_from_did(value)
    except FedrecordError:
        raise malformed(f"{key} is the did:key of an Ed25519 key") from None
    return value
