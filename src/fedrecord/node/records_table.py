"""The ``records`` table: signed records kept exactly as received, found by type, signer or subject.

The SQL lives in :class:`fedrecord.node.store.SqliteNodeStore` (``put_record``, ``records``,
``record``); this module keeps the verification of stored records and its cache.

Records read back from our own database are re-verified on the way out (the
database is not trusted blindly), but a record's verification is pure: the
same bytes opened as the same type always give the same result.  So the
verified records are kept in a bounded in-process cache keyed by type and
the exact stored bytes (which fix the record id: records are immutable and
content-addressed), and a row whose bytes were verified before is not
verified again.  Nothing is ever invalidated: a changed row has other bytes
and is verified afresh.  Records arriving over the wire never go through
this cache; they are opened with ``open_record`` on every request.  Deposit
records (whose sealed box holds a document key that deletion must destroy)
are never cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final, TypeVar

from fedrecord.core import Deposit, Record, Signed, open_record

R = TypeVar("R", bound=Record)

CACHE_SIZE: Final = 4096
_verified: OrderedDict[tuple[type[Record], bytes], Signed[Any]] = OrderedDict()


def open_stored(encoded: bytes, cls: type[R]) -> Signed[R]:
    """``open_record`` for bytes read from our own database, through the cache of verified records."""
    key = (cls, bytes(encoded))
    hit = _verified.get(key)
    if hit is not None:
        _verified.move_to_end(key)
        return hit
    signed = open_record(key[1], cls)
    if cls is not Deposit:
        _verified[key] = signed
        if len(_verified) > CACHE_SIZE:
            _verified.popitem(last=False)
    return signed
