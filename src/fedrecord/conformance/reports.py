"""The suite's reports: a summary for people, JUnit XML for CI servers, JSON for scripts.

The JUnit file follows the common Ant/Jenkins form (``testsuites`` >
``testsuite`` > ``testcase``, with ``failure`` or ``skipped``); each test
case's requirements are ``property`` elements named ``requirement``.  The JSON
file is described by ``report.schema.json`` beside this module.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

from .coverage import Coverage
from .runner import Result

SUITE = "fedrecord-conformance"


def counts(results: list[Result]) -> Counter[str]:
    found = Counter(r.status for r in results)
    return Counter({s: found.get(s, 0) for s in ("passed", "failed", "skipped")})


def summary(results: list[Result], coverage: Coverage) -> str:
    """Passed, failed and skipped, the failures with their reasons, and the requirements each failure touches."""
    tally = counts(results)
    lines = [
        f"{len(results)} cases: {tally['passed']} passed, {tally['failed']} failed, {tally['skipped']} skipped",
    ]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines.append("failed:")
        lines += [f"  {r.case.id} [{', '.join(r.case.requirements)}]: {r.message}" for r in failed]
    by_requirement: dict[str, Counter[str]] = {}
    for r in results:
        for requirement in r.case.requirements:
            by_requirement.setdefault(requirement, Counter())[r.status] += 1
    broken = sorted(req for req, tally in by_requirement.items() if tally["failed"])
    lines.append(
        f"requirements checked: {len(by_requirement)}; with a failure: {', '.join(broken) or 'none'}"
    )
    lines.append(
        f"MUST coverage of the cases run: {len(coverage.tested)}/{len(coverage.musts)} ({coverage.percent:.1f} %)"
    )
    return "\n".join(lines)


def write_junit(path: Path, results: list[Result], *, target: str) -> None:
    tally = counts(results)
    total_time = sum(r.seconds for r in results)
    # No ``skipped`` count on ``testsuites``: the JUnit schema CI servers read (Jenkins' junit-10.xsd)
    # does not have it there; the ``testsuite`` below carries it.
    suites = ElementTree.Element(
        "testsuites",
        name=SUITE,
        tests=str(len(results)),
        failures=str(tally["failed"]),
        errors="0",
        time=f"{total_time:.3f}",
    )
    suite = ElementTree.SubElement(
        suites,
        "testsuite",
        name=SUITE,
        tests=str(len(results)),
        failures=str(tally["failed"]),
        errors="0",
        skipped=str(tally["skipped"]),
        time=f"{total_time:.3f}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        hostname=platform.node() or "localhost",
    )
    properties = ElementTree.SubElement(suite, "properties")
    ElementTree.SubElement(properties, "property", name="target", value=target)
    for r in results:
        element = ElementTree.SubElement(
            suite, "testcase", classname=f"{SUITE}.{r.case.area}", name=r.case.id, time=f"{r.seconds:.3f}"
        )
        props = ElementTree.SubElement(element, "properties")
        for requirement in r.case.requirements:
            ElementTree.SubElement(props, "property", name="requirement", value=requirement)
        for tag in sorted(r.case.tags):
            ElementTree.SubElement(props, "property", name="tag", value=tag)
        if r.status == "failed":
            failure = ElementTree.SubElement(element, "failure", message=r.message, type="nonconformance")
            failure.text = f"{r.case.title}\n{r.message}"
        elif r.status == "skipped":
            ElementTree.SubElement(element, "skipped", message=r.message)
    ElementTree.indent(suites)
    path.write_bytes(ElementTree.tostring(suites, encoding="utf-8", xml_declaration=True))


def report_data(
    results: list[Result], coverage: Coverage, *, target: str, peer: str | None
) -> dict[str, object]:
    tally = counts(results)
    return {
        "suite": SUITE,
        "target": target,
        "peer": peer,
        "summary": {"total": len(results), **tally},
        "coverage": coverage.as_dict(),
        "tests": [
            {
                "id": r.case.id,
                "title": r.case.title,
                "status": r.status,
                "message": r.message,
                "requirements": list(r.case.requirements),
                "tags": sorted(r.case.tags),
                "seconds": round(r.seconds, 3),
            }
            for r in results
        ],
    }


def write_json(path: Path, data: dict[str, object]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
