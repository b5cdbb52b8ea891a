"""Which MUST requirements of spec/fedrecord.md the suite's cases check.

The MUST ids are the list in ``must-requirements.txt`` beside this module,
installed with the package; the project's own tests keep it equal to the
spec's MUST paragraphs (tests/test_requirement_ids.py), so an id cannot
disappear, or be weakened to SHOULD, without the list being changed on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from .registry import Case


def must_requirements() -> list[str]:
    """The MUST requirement ids of the spec, in the spec's order."""
    text = resources.files(__package__).joinpath("must-requirements.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass(frozen=True)
class Coverage:
    musts: list[str]
    tested: list[str]
    untested: list[str]
    #: Requirement ids the cases name that are not MUST requirements (SHOULDs, or unknown ids).
    others: list[str]

    @property
    def percent(self) -> float:
        return 100.0 * len(self.tested) / len(self.musts) if self.musts else 100.0

    def as_dict(self) -> dict[str, object]:
        return {
            "must": len(self.musts),
            "tested": len(self.tested),
            "percent": round(self.percent, 1),
            "untested": self.untested,
        }

    def text(self) -> str:
        lines = [
            f"MUST requirements in spec/: {len(self.musts)}",
            f"tested by at least one case: {len(self.tested)} ({self.percent:.1f} %)",
            f"untested ({len(self.untested)}): {', '.join(self.untested) or 'none'}",
        ]
        return "\n".join(lines)


def coverage(cases: list[Case]) -> Coverage:
    named = {r for c in cases for r in c.requirements}
    musts = must_requirements()
    return Coverage(
        musts=musts,
        tested=[r for r in musts if r in named],
        untested=[r for r in musts if r not in named],
        others=sorted(named - set(musts)),
    )
