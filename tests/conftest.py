"""Shared fixtures: fixed identities and a fixed clock, so tests are reproducible."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from fedrecord.core import EncryptionKeyPair, SigningIdentity

if TYPE_CHECKING:
    from .node_helpers import Story

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


@pytest_asyncio.fixture(loop_scope="module")
async def story(tmp_path: Path) -> AsyncIterator[Story]:
    """The demo's story on served nodes of the test's own (a module may define a story of its own)."""
    from .node_helpers import build_story  # real nodes: imported only by the tests that ask for them

    built = await build_story(tmp_path)
    yield built
    await built.close()
