"""Running cases one after another against one session, with a time limit each."""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from .registry import Case, Failed, Skipped
from .session import Session

CASE_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    """The outcome of one case: ``passed``, ``failed`` or ``skipped``, with why."""

    case: Case
    status: str
    message: str
    seconds: float


async def run_cases(
    session: Session, cases: list[Case], *, on_result: Callable[[Result], None] | None = None
) -> list[Result]:
    """Run ``cases`` in order; one case's failure never stops the others."""
    results = []
    for case in cases:
        result = await run_case(session, case)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


async def run_case(session: Session, case: Case) -> Result:
    declared = case.tags & session.declared_skips
    if declared:
        return Result(
            case, "skipped", f"the target declares it does not implement: {', '.join(sorted(declared))}", 0.0
        )
    started = time.monotonic()
    try:
        async with asyncio.timeout(CASE_TIMEOUT):
            await case.run(session)
    except Skipped as exc:
        return Result(case, "skipped", str(exc), time.monotonic() - started)
    except Failed as exc:
        return Result(case, "failed", str(exc), time.monotonic() - started)
    except TimeoutError:
        return Result(case, "failed", f"no outcome within {CASE_TIMEOUT:.0f} s", time.monotonic() - started)
    except Exception as exc:  # noqa: BLE001 - a broken target must not stop the suite
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = f"{exc.__class__.__name__}: {exc} (at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})"
        return Result(case, "failed", message, time.monotonic() - started)
    return Result(case, "passed", "", time.monotonic() - started)
