"""The ``records`` table: signed records kept exactly as received, found by type, signer or subject.

The SQL lives in :class:`fedrecord.node.store.SqliteNodeStore` (``put_record``, ``records``,
``record``); this module keeps the verification of stored records and its cache.

Records read back from our own database are re-verified on the way out (the
database is not trusted blindly: a grant written into it by someone without
the patient's key must not count), but a record's verification is pure: the
same bytes opened as the same type always give the same result.  So the
verified records are kept in a bounded in-process cache keyed by type and
the exact bytes (which fix the record id: records are immutable and
content-addressed), and bytes verified before are not verified again.
Nothing is ever invalidated: other bytes are verified afresh.  The same holds
for records a peer sends with every request -- its grant chain, its node
profile -- which go through the cache too; records that are new with each
request (access receipts, deposits) are opened with ``open_record``, and
deposit records (whose sealed box holds a document key that deletion must
destroy) are never cached.

Records read only to be passed on -- a sync view, whose every record the peer
verifies ([API-45]) -- or for their ids, dates and sizes are read with
``verify=False``: a sync of tens of thousands of records after a restart
would otherwise verify each again, on both sides, for nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final, TypeVar

from fedrecord.core import Deposit, Record, Signed, open_record
from fedrecord.core.signed import reopen_record

R = TypeVar("R", bound=Record)

CACHE_SIZE: Final = 4096
_verified: OrderedDict[tuple[type[Record], bytes], Signed[Any]] = OrderedDict()


def open_stored(encoded: bytes, cls: type[R], *, verify: bool = True) -> Signed[R]:
    """``open_record`` through the cache of verified records (same errors; a refused record is not kept).

    Args:
        verify: False for records read only to be passed on to a peer, who
            verifies them itself, or for their ids and dates: they are
            decoded and checked, but their signature is not verified again
            (:func:`fedrecord.core.signed.reopen_record`).  Nothing read so
            is cached as verified.

    Raises:
        RemoteProtocolError: as :func:`fedrecord.core.open_record`.
    """
    key = (cls, bytes(encoded))
    hit = _verified.get(key)
    if hit is not None:
        _verified.move_to_end(key)
        return hit
    if not verify:
        return reopen_record(key[1], cls)
    signed = open_record(key[1], cls)
    if cls is not Deposit:
        _verified[key] = signed
        if len(_verified) > CACHE_SIZE:
            _verified.popitem(last=False)
    return signed
