"""Benchmarks of set reconciliation (spec section 16), as counts and ratios against baselines measured in the same run.

    python benchmarks/sync.py [--json PATH] [--quick]

Items are ``(timestamp, 32-byte id)`` pairs: ids drawn from a seeded
``random.Random``, timestamps spread uniformly over 10**7 s.  Each case has
``n`` items common to both sides plus the differences, drawn the same way (so
they fall anywhere in the space).  The initiator (``Reconciler``) and the
stateless responder (``respond``) run in this one process and pass messages
directly; a *round trip* is one ``respond`` call, and *bytes* are the lengths
of every message both ways exactly as ``initiate``, ``receive`` and
``respond`` return them (the CBOR bodies; no HTTP headers).  Every
reconciliation is checked: the initiator's ``need`` and ``have`` must equal
the true set differences.

* ``rt_d1``, ``bytes_d1``: n = 100,000, one item on one side only.  Measured
  with the extra item on the initiator's side and on the responder's; the
  figure is the worse of the two.  Targets <= 3 round trips, <= 2,000 bytes.
* ``rt_identical``, ``bytes_identical``: n = 100,000 on both sides, nothing
  different.  Targets: exactly 1 round trip (printed as <= 1), <= 400 bytes.
* ``bytes_d1000``: n = 100,000 common items plus 500 only on each side
  (d = 1,000).  Target <= d * 400 + 2,000 = 402,000 bytes.
  ``bytes_d1000_negentropy``: the same reconciliation with ``NEGENTROPY_PARAMS``
  (our protocol with negentropy's choices: 16 buckets, 16-byte fingerprints,
  lists under 32 items, whole ids in lists); ``bytes_d1000_vs_negentropy`` =
  ours / negentropy's, target <= 0.6.  ``rt_d1000``, ``rt_d1000_negentropy``:
  their round trips, for information.
* ``cpu_vs_naive_1m``: n = 1,000,000 common items plus 5 only on each side
  (d = 10), both ``SortedItems`` indexes built beforehand.  CPU time
  (``time.process_time``) of a whole reconciliation, both sides' work,
  divided by the CPU time of a *naive protocol* that exchanges full id lists:
  the initiator sends all its ids concatenated into one CBOR byte string
  (``fedrecord.core.cbor.encode``); the responder decodes it
  (``cbor.decode`` with a size cap), splits it into ids, takes both
  differences against the set of its own ids (its set less the received ids;
  the received ids not in its set) and answers with
  ``[ids the initiator lacks, ids it lacks]``, each concatenated; the
  initiator decodes that and splits it into ids.  The naive side's own
  structures (the initiator's id list, the responder's id set) are built
  beforehand too, as our indexes are.  Target <= 0.1.  Also reported:
  ``cpu_reconcile_1m_s``, ``cpu_naive_1m_s`` and the bytes of each,
  ``bytes_1m_d10`` and ``bytes_naive_1m``.
* ``index_build_vs_sort``: CPU time to build ``SortedItems(items)`` from the
  1,000,000 unsorted items (the common ones plus the initiator's extras) /
  CPU time of ``sorted()`` on the same list of tuples.  Target <= 3.

``--quick`` runs the same cases with n = 20,000 and 100,000 (instead of
100,000 and 1,000,000) and fewer rounds; the figures keep their names, and
``n_items`` and ``n_items_large`` say which sizes were used.  The targets
are for the full sizes: at quick's sizes ``cpu_vs_naive_1m``, whose baseline
grows with n and the reconciliation with log n, is usually above its target.

One thread; each timing is the best of several rounds, the timed runs taking
turns, with the garbage collector paused during timed regions as ``timeit``
does.

Sync figures measured elsewhere (minutes each, so not run from here):
``revocation_p99_s``, how fast a revocation reaches the nodes holding copies
under it (target <= 1.0 s), is ``benchmarks/propagation.py``; the 1 GiB
transfer (``transfer_overhead_ratio`` < 1.10 and ``peak_extra_rss_mib`` <
100 per process, across an interrupted and resumed fetch) is
``benchmarks/large_transfer.py``.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from fedrecord.core import cbor  # noqa: E402
from fedrecord.core.reconcile import (  # noqa: E402
    DEFAULT_PARAMS,
    ID_SIZE,
    NEGENTROPY_PARAMS,
    Item,
    Params,
    Reconciler,
    SortedItems,
    respond,
)
from node import _report  # noqa: E402  (benchmarks/node.py: the table and the JSON file)

SEED = 20_250_101
START_TIME = 1_700_000_000
SPREAD = 10**7
NAIVE_CAP = 64 << 20  # the naive protocol's message cap: room for 1,000,000 ids and more
MAX_ROUND_TRIPS = 100

ELSEWHERE = (
    ("revocation_p99_s", "benchmarks/propagation.py (target <= 1.0 s)"),
    ("1 GiB transfer", "benchmarks/large_transfer.py (overhead < 1.10, peak RSS < 100 MiB per process)"),
)
"""Sync figures measured by other benchmarks, which take minutes: printed as pointers, not run."""

TARGETS: dict[str, tuple[str, float]] = {
    "rt_d1": ("<=", 3),
    "bytes_d1": ("<=", 2000),
    "rt_identical": ("<=", 1),
    "bytes_identical": ("<=", 400),
    "bytes_d1000": ("<=", 1000 * 400 + 2000),
    "bytes_d1000_vs_negentropy": ("<=", 0.6),
    "cpu_vs_naive_1m": ("<=", 0.1),
    "index_build_vs_sort": ("<=", 3),
}


def _items(rnd: random.Random, count: int) -> list[Item]:
    return [(START_TIME + rnd.randrange(SPREAD), rnd.randbytes(ID_SIZE)) for _ in range(count)]


@dataclass(frozen=True, kw_only=True)
class Case:
    """Two sides: ``common`` items on both, ``only_ours`` on the initiator's, ``only_theirs`` on the responder's."""

    common: list[Item]
    only_ours: list[Item]
    only_theirs: list[Item]

    @classmethod
    def draw(cls, rnd: random.Random, n: int, only_ours: int, only_theirs: int) -> Case:
        drawn = _items(rnd, n + only_ours + only_theirs)
        return cls(common=drawn[:n], only_ours=drawn[n : n + only_ours], only_theirs=drawn[n + only_ours :])

    @property
    def ours(self) -> list[Item]:
        return self.common + self.only_ours

    @property
    def theirs(self) -> list[Item]:
        return self.common + self.only_theirs


@dataclass(frozen=True, kw_only=True)
class Outcome:
    round_trips: int
    bytes_total: int
    need: list[bytes]
    have: list[bytes]


def _reconcile(ours: SortedItems, theirs: SortedItems, params: Params = DEFAULT_PARAMS) -> Outcome:
    """One whole reconciliation, the messages passed directly between the two sides."""
    initiator = Reconciler(ours, params)
    message: bytes | None = initiator.initiate()
    round_trips = 0
    bytes_total = 0
    while message is not None:
        if round_trips >= MAX_ROUND_TRIPS:
            raise AssertionError("reconciliation does not converge")
        reply = respond(theirs, message, params)
        round_trips += 1
        bytes_total += len(message) + len(reply)
        message = initiator.receive(reply)
    return Outcome(round_trips=round_trips, bytes_total=bytes_total, need=initiator.need, have=initiator.have)


def _check(outcome: Outcome, case: Case, label: str) -> None:
    """The initiator must end with exactly the true differences, each once."""
    need, have = sorted(outcome.need), sorted(outcome.have)
    if need != sorted(i for _, i in case.only_theirs) or have != sorted(i for _, i in case.only_ours):
        raise AssertionError(f"{label}: need/have are not the set differences")


def _run_case(case: Case, label: str, params: Params = DEFAULT_PARAMS) -> Outcome:
    outcome = _reconcile(SortedItems(case.ours), SortedItems(case.theirs), params)
    _check(outcome, case, label)
    return outcome


def message_costs(rnd: random.Random, n: int) -> dict[str, Any]:
    """Round trips and bytes for d = 1 (both orientations), identical sets and d = 1,000 (ours and negentropy's)."""
    results: dict[str, Any] = {}
    d1 = [
        _run_case(Case.draw(rnd, n, 1, 0), "d1, extra on the initiator"),
        _run_case(Case.draw(rnd, n, 0, 1), "d1, extra on the responder"),
    ]
    results["rt_d1"] = max(o.round_trips for o in d1)
    results["bytes_d1"] = max(o.bytes_total for o in d1)
    identical = _run_case(Case.draw(rnd, n, 0, 0), "identical")
    results["rt_identical"] = identical.round_trips
    results["bytes_identical"] = identical.bytes_total
    case = Case.draw(rnd, n, 500, 500)
    ours = _run_case(case, "d1000")
    negentropy = _run_case(case, "d1000 negentropy", NEGENTROPY_PARAMS)
    results["bytes_d1000"] = ours.bytes_total
    results["bytes_d1000_negentropy"] = negentropy.bytes_total
    results["bytes_d1000_vs_negentropy"] = round(ours.bytes_total / negentropy.bytes_total, 3)
    results["rt_d1000"] = ours.round_trips
    results["rt_d1000_negentropy"] = negentropy.round_trips
    return results


# --- the naive protocol: full id lists -------------------------------------------------------------------


def _split(blob: bytes) -> list[bytes]:
    return [blob[i : i + ID_SIZE] for i in range(0, len(blob), ID_SIZE)]


def naive_request(our_ids: list[bytes]) -> bytes:
    """Initiator: all its ids, concatenated into one CBOR byte string."""
    return cbor.encode(b"".join(our_ids))


def naive_respond(their_ids: set[bytes], request: bytes) -> bytes:
    """Responder: ``[ids the initiator lacks, ids the responder lacks]``, each concatenated."""
    blob = cbor.decode(request, max_size=NAIVE_CAP)
    if type(blob) is not bytes or len(blob) % ID_SIZE:
        raise AssertionError("a naive request is one byte string of whole ids")
    received = _split(blob)
    # Cheaper than building a set of the received ids and taking two set differences.
    lacking = [item_id for item_id in received if item_id not in their_ids]
    return cbor.encode([b"".join(their_ids.difference(received)), b"".join(lacking)])


def naive_receive(reply: bytes) -> tuple[list[bytes], list[bytes]]:
    """Initiator: (need, have) from the responder's answer."""
    need, have = cbor.decode(reply, max_size=NAIVE_CAP)
    return _split(need), _split(have)


def _best_cpu_interleaved(rounds: int, *runs: Callable[[], object]) -> list[float]:
    """Best CPU time of each run over ``rounds`` rounds, the runs taking turns so drift hits all alike."""
    best = [float("inf")] * len(runs)
    for _ in range(rounds):
        for index, run in enumerate(runs):
            # As timeit does: collect first, then keep the collector out of the timed region.
            gc.collect()
            gc.disable()
            try:
                start = time.process_time()
                run()
                best[index] = min(best[index], time.process_time() - start)
            finally:
                gc.enable()
    return best


def cpu_against_naive(rnd: random.Random, n: int, rounds: int) -> dict[str, Any]:
    """CPU of a reconciliation with d = 10 over n items against the naive protocol, and the index build against a sort."""
    case = Case.draw(rnd, n, 5, 5)
    ours_unsorted = case.ours
    ours, theirs = SortedItems(ours_unsorted), SortedItems(case.theirs)
    our_ids = [i for _, i in ours_unsorted]
    their_ids = {i for _, i in case.theirs}

    outcomes: list[Outcome] = []
    naive_outcomes: list[tuple[bytes, bytes, list[bytes], list[bytes]]] = []

    def reconcile_once() -> None:
        outcomes.append(_reconcile(ours, theirs))

    def naive_once() -> None:
        request = naive_request(our_ids)
        reply = naive_respond(their_ids, request)
        need, have = naive_receive(reply)
        naive_outcomes.append((request, reply, need, have))

    cpu_reconcile, cpu_naive = _best_cpu_interleaved(rounds, reconcile_once, naive_once)
    _check(outcomes[-1], case, "d10 over the large set")
    request, reply, need, have = naive_outcomes[-1]
    _check(Outcome(round_trips=1, bytes_total=0, need=need, have=have), case, "naive")
    # Drop the last round's messages (and references to 32 MB blobs) before the next timings.
    outcomes.clear()
    naive_outcomes.clear()

    def build_index() -> None:
        SortedItems(ours_unsorted)

    def sort_tuples() -> None:
        sorted(ours_unsorted)

    build_time, sort_time = _best_cpu_interleaved(max(2, rounds // 2), build_index, sort_tuples)
    return {
        "cpu_vs_naive_1m": round(cpu_reconcile / cpu_naive, 4),
        "cpu_reconcile_1m_s": round(cpu_reconcile, 4),
        "cpu_naive_1m_s": round(cpu_naive, 4),
        "bytes_1m_d10": _reconcile(ours, theirs).bytes_total,
        "bytes_naive_1m": len(request) + len(reply),
        "index_build_vs_sort": round(build_time / sort_time, 3),
        "index_build_1m_s": round(build_time, 3),
        "sort_1m_s": round(sort_time, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds, for a smoke run")
    args = parser.parse_args()
    n, n_large, rounds = (20_000, 100_000, 3) if args.quick else (100_000, 1_000_000, 7)
    rnd = random.Random(SEED)
    started = time.perf_counter()
    results: dict[str, Any] = {"n_items": n, "n_items_large": n_large}
    results.update(message_costs(rnd, n))
    results.update(cpu_against_naive(rnd, n_large, rounds))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    _report(results, TARGETS, args.json)
    for name, where in ELSEWHERE:
        print(f"{name:36} not run here: see {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
