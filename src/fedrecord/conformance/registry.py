"""The cases of the conformance suite: each one named, tagged and tied to the requirements it checks.

A case is an async function of a :class:`~fedrecord.conformance.session.Session`,
registered with :func:`case`.  It passes by returning, fails by raising
:class:`Failed` (or any other exception, reported as a failure with its type),
and is skipped by raising :class:`Skipped` or when the target declares that it
does not implement one of the case's tags (spec/conformance.md, section 5).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

CaseFunction = Callable[["Session"], Awaitable[None]]

REQUIREMENT = re.compile(r"^[A-Z]+-\d+$")
CASE_ID = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*$")


class Failed(AssertionError):
    """The target did something the spec does not allow."""


class Skipped(Exception):
    """The case does not apply to this target (it declared the feature optional, or a peer is absent)."""


@dataclass(frozen=True)
class Case:
    """One conformance test: its id, what it checks, and the requirements it checks it against."""

    id: str
    title: str
    requirements: tuple[str, ...]
    tags: frozenset[str]
    adversarial: bool
    run: CaseFunction

    @property
    def area(self) -> str:
        return self.id.split(".", 1)[0]


CASES: dict[str, Case] = {}


def case(
    case_id: str,
    *,
    requires: tuple[str, ...] | list[str],
    tags: tuple[str, ...] = (),
    adversarial: bool = False,
) -> Callable[[CaseFunction], CaseFunction]:
    """Register a case; its title is the first line of the function's docstring.

    The case's tags are its area (the part of ``case_id`` before the first
    dot), ``tags``, and ``adversarial`` for cases that send hostile input.

    Raises:
        ValueError: a malformed or repeated id, a requirement id that is not
            ``AREA-n``, or a case without requirements or docstring.
    """

    def register(function: CaseFunction) -> CaseFunction:
        if not CASE_ID.match(case_id) or case_id in CASES:
            raise ValueError(f"case id {case_id!r} is malformed or registered twice")
        if not requires or not all(REQUIREMENT.match(r) for r in requires):
            raise ValueError(f"case {case_id!r} must name the requirements it checks as AREA-n")
        if not function.__doc__:
            raise ValueError(f"case {case_id!r} needs a docstring: its first line is its title")
        area = case_id.split(".", 1)[0]
        all_tags = {area, *tags} | ({"adversarial"} if adversarial else set())
        CASES[case_id] = Case(
            id=case_id,
            title=function.__doc__.strip().splitlines()[0],
            requirements=tuple(requires),
            tags=frozenset(all_tags),
            adversarial=adversarial,
            run=function,
        )
        return function

    return register


def all_cases() -> list[Case]:
    """Every registered case, in the order of their modules and definitions."""
    from . import cases  # noqa: F401  (importing the package registers its cases)

    return list(CASES.values())


def select(cases: list[Case], only: set[str]) -> list[Case]:
    """The cases matching any of ``only``: a tag, a case id, an id prefix ending in ``.``, or a requirement id."""
    if not only:
        return cases
    return [
        c
        for c in cases
        if c.tags & only
        or c.id in only
        or any(c.id.startswith(o) for o in only if o.endswith("."))
        or set(c.requirements) & only
    ]
