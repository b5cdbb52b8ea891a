"""Shared fixtures: fixed identities and a fixed clock, so tests are reproducible."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from fedrecord.core import EncryptionKeyPair, SigningIdentity

NOW = 1_790_000_000  # 2026-09-21, the fixed "now" of every core test
DAY = 86_400


def seed(name: str) -> bytes:
    """A deterministic 32-byte seed per name."""
    return hashlib.sha256(b"fedrecord-test-seed:" + name.encode()).digest()


def identity(name: str) -> SigningIdentity:
    return SigningIdentity.from_seed(seed(name))


def encryption_keys(name: str) -> EncryptionKeyPair:
    return EncryptionKeyPair.from_seed(seed("enc:" + name))


@pytest.fixture
def make_identity() -> Callable[[str], SigningIdentity]:
    return identity
