"""The conformance suite, tested: it passes our node, it catches broken ones, and its framework is right.

1. The whole suite runs against our own node started as spec/conformance.md
   says (``--launch`` and ``--launch-peer``, the commands CI runs), and every
   case passes; its JSON and JUnit reports are checked against their schemas.
2. Twelve nodes, each with one check disabled by a launcher in
   tests/conformance_launchers/, make the cases that test that check fail,
   while healthy cases on the same node still pass.
3. The framework's own parts (case registration, selection, coverage,
   reports, the runner) on fabricated cases.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import jsonschema
import pytest
import xmlschema

from fedrecord.conformance import coverage as coverage_module
from fedrecord.conformance import registry
from fedrecord.conformance.coverage import Coverage, coverage
from fedrecord.conformance.registry import Case, Failed, Skipped, all_cases, case, select
from fedrecord.conformance.reports import report_data, summary, write_json, write_junit
from fedrecord.conformance.runner import Result, run_case, run_cases

ROOT = Path(__file__).resolve().parents[1]
LAUNCHERS = ROOT / "tests" / "conformance_launchers"
REPORT_SCHEMA = ROOT / "src" / "fedrecord" / "conformance" / "report.schema.json"
JUNIT_XSD = ROOT / "tests" / "data" / "external" / "junit" / "junit-10.xsd"
MUST_LIST = ROOT / "src" / "fedrecord" / "conformance" / "must-requirements.txt"

#: The reference node, started as the contract says: the command CI gives the suite.
REFERENCE = f"{shlex.quote(sys.executable)} -m fedrecord.conformance.reference"
MIN_ADVERSARIAL = 40
MIN_COVERAGE = 90.0
SUITE_TIMEOUT = 900  # seconds for the whole suite (it takes about a minute)
LAUNCHER_TIMEOUT = 180


def suite_command() -> list[str]:
    """``fedrecord-conformance`` as installed beside this Python, or the module when not installed."""
    script = Path(sys.executable).parent / "fedrecord-conformance"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fedrecord.conformance"]


def run_suite(*args: str, timeout: float = SUITE_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*suite_command(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def by_status(report: dict[str, Any]) -> dict[str, set[str]]:
    statuses: dict[str, set[str]] = {"passed": set(), "failed": set(), "skipped": set()}
    for test in report["tests"]:
        statuses[test["status"]].add(test["id"])
    return statuses


# --- 1. the whole suite against our own node ---------------------------------------------------


class FullRun:
    def __init__(
        self, process: subprocess.CompletedProcess[str], report: dict[str, Any], junit: Path
    ) -> None:
        self.process = process
        self.report = report
        self.junit = junit


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> FullRun:
    """One run of every case against our node and a clinic node, both launched by the contract."""
    folder = tmp_path_factory.mktemp("conformance")
    json_path, junit_path = folder / "report.json", folder / "report.xml"
    process = run_suite(
        "--launch",
        REFERENCE,
        "--launch-peer",
        REFERENCE,
        "--json",
        str(json_path),
        "--junit",
        str(junit_path),
        "--log",
        str(folder / "nodes.log"),
    )
    assert json_path.exists(), f"no JSON report; the suite said:\n{process.stdout}\n{process.stderr}"
    return FullRun(process, json.loads(json_path.read_text()), junit_path)


def test_every_case_passes_against_our_node(full_run: FullRun) -> None:
    statuses = by_status(full_run.report)
    failures = {t["id"]: t["message"] for t in full_run.report["tests"] if t["status"] == "failed"}
    assert not failures, f"cases failed against the reference node: {failures}\n{full_run.process.stdout}"
    assert full_run.process.returncode == 0, full_run.process.stdout + full_run.process.stderr
    assert statuses["passed"], "no case passed"
    unexplained = [t["id"] for t in full_run.report["tests"] if t["status"] == "skipped" and not t["message"]]
    assert not unexplained, f"skipped without a reason: {unexplained}"
    # With --launch-peer, no case may skip for want of a second node.
    for_peer = [
        t["id"] for t in full_run.report["tests"] if t["status"] == "skipped" and "peer" in t["message"]
    ]
    assert not for_peer, f"skipped although a peer was launched: {for_peer}"


def test_the_run_is_the_whole_suite_with_enough_adversarial_cases(full_run: FullRun) -> None:
    ran = [t for t in full_run.report["tests"] if t["status"] != "skipped"]
    assert [t["id"] for t in full_run.report["tests"]] == [c.id for c in all_cases()]
    adversarial = [t for t in ran if "adversarial" in t["tags"]]
    assert len(adversarial) >= MIN_ADVERSARIAL, f"only {len(adversarial)} adversarial cases ran"
    summary_line = full_run.process.stdout.strip().splitlines()
    assert any(
        re.match(rf"{len(full_run.report['tests'])} cases: \d+ passed, 0 failed", line)
        for line in summary_line
    )


def test_json_report_follows_its_schema(full_run: FullRun) -> None:
    schema = json.loads(REPORT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(full_run.report, schema, cls=jsonschema.Draft202012Validator)
    report = full_run.report
    tally = Counter(t["status"] for t in report["tests"])
    assert report["summary"] == {
        "total": len(report["tests"]),
        "passed": tally["passed"],
        "failed": tally["failed"],
        "skipped": tally["skipped"],
    }
    registered = {c.id: c for c in all_cases()}
    for test in report["tests"]:
        known = registered[test["id"]]
        assert test["requirements"] == list(known.requirements), test["id"]
        assert test["title"] == known.title
        assert set(test["tags"]) == known.tags
    assert report["target"].startswith("http://127.0.0.1:") and report["peer"].startswith("http://127.0.0.1:")
    assert report["coverage"]["must"] == len(must_ids())


def test_junit_report_is_valid_and_matches_the_run(full_run: FullRun) -> None:
    tree = ElementTree.parse(full_run.junit)
    suites = tree.getroot()
    assert suites.tag == "testsuites"
    check_junit_schema(tree)
    [suite] = suites.findall("testsuite")
    testcases = suite.findall("testcase")
    report = full_run.report
    assert [t.get("name") for t in testcases] == [t["id"] for t in report["tests"]]
    for element, test in zip(testcases, report["tests"], strict=True):
        properties = element.findall("properties/property")
        requirements = [p.get("value") for p in properties if p.get("name") == "requirement"]
        assert requirements == test["requirements"], test["id"]
        assert {p.get("value") for p in properties if p.get("name") == "tag"} == set(test["tags"])
        assert element.get("classname") == f"fedrecord-conformance.{test['id'].split('.')[0]}"
        status = (
            "failed"
            if element.find("failure") is not None
            else "skipped"
            if element.find("skipped") is not None
            else "passed"
        )
        assert status == test["status"], test["id"]
    summary_counts = report["summary"]
    for element in (suites, suite):
        assert int(element.get("tests", "-1")) == len(testcases) == summary_counts["total"]
        assert int(element.get("failures", "-1")) == summary_counts["failed"]
        assert element.get("errors") == "0"
    assert int(suite.get("skipped", "-1")) == summary_counts["skipped"]


def check_junit_schema(tree: ElementTree.ElementTree) -> None:
    """Validate against Jenkins' junit-10.xsd (tests/data/external/README.md), less the one extension.

    The report puts ``properties`` (requirements, tags) inside each ``testcase``,
    as pytest's ``record_property`` does; junit-10.xsd has them on test suites
    only.  Those are taken out of a copy before validating, and checked by the caller.
    """
    root = ElementTree.fromstring(ElementTree.tostring(tree.getroot()))
    for testcase in root.iter("testcase"):
        for properties in testcase.findall("properties"):
            testcase.remove(properties)
    errors = [f"{e.path}: {e.reason}" for e in xmlschema.XMLSchema(JUNIT_XSD).iter_errors(root)]
    assert not errors, errors


def must_ids() -> list[str]:
    return [line.strip() for line in MUST_LIST.read_text().splitlines() if line.strip()]


def test_coverage_of_the_must_requirements() -> None:
    process = run_suite("--coverage", timeout=60)
    assert process.returncode == 0, process.stderr
    text = process.stdout
    musts = int(re.search(r"MUST requirements in spec/: (\d+)", text).group(1))  # type: ignore[union-attr]
    tested = re.search(r"tested by at least one case: (\d+) \(([\d.]+) %\)", text)
    untested = re.search(r"untested \((\d+)\): (.*)", text)
    assert tested is not None and untested is not None, text
    assert musts == len(must_ids()) == len(set(must_ids()))
    assert int(tested.group(1)) + int(untested.group(1)) == musts
    assert abs(float(tested.group(2)) - 100 * int(tested.group(1)) / musts) < 0.05
    listed = [] if untested.group(2) == "none" else untested.group(2).split(", ")
    assert len(listed) == int(untested.group(1)) and set(listed) <= set(must_ids())
    assert float(tested.group(2)) >= MIN_COVERAGE, f"MUST coverage {tested.group(2)} %; untested: {listed}"


# --- 2. twelve broken nodes, each caught ----------------------------------------------------------

#: launcher (tests/conformance_launchers/launch_without_<name>.py) ->
#: (the cases that must fail against it, healthy cases that must still pass against it)
BROKEN: dict[str, tuple[list[str], list[str]]] = {
    "record_signature": (
        ["capabilities.links-must-open", "signatures.record-forgeries", "signatures.record-envelope"],
        ["basics.profile", "capabilities.whole-record-read"],
    ),
    "request_signature": (
        ["signatures.wrong-key", "signatures.host-authority", "sync.range-is-signed"],
        ["capabilities.whole-record-read", "signatures.answers-bound"],
    ),
    "expiry": (
        ["capabilities.expired", "capabilities.not-yet-valid", "sync.chain-refused"],
        ["capabilities.whole-record-read"],
    ),
    "revocation": (
        ["capabilities.revoked-root", "capabilities.revoked-middle-link", "documents.deposit-grant"],
        ["capabilities.whole-record-read", "capabilities.revocation-set-head"],
    ),
    "audience": (["capabilities.wrong-audience", "sync.chain-refused"], ["capabilities.whole-record-read"]),
    "scope": (
        [
            "capabilities.out-of-scope-like-missing",
            "capabilities.scope-by-id-and-label",
            "documents.fetch-out-of-scope",
        ],
        ["capabilities.whole-record-read"],
    ),
    "label_restriction": (
        [
            "capabilities.restriction-by-grant",
            "capabilities.restriction-by-audience",
            "capabilities.restriction-on-parent",
        ],
        ["capabilities.whole-record-read"],
    ),
    "replay": (["signatures.replay"], ["capabilities.whole-record-read"]),
    "delegation_narrowing": (
        ["capabilities.widened-actions-time-purpose", "capabilities.widened-scope"],
        ["capabilities.whole-record-read"],
    ),
    "key_wrap_binding": (["documents.fetch-key-wrap"], ["capabilities.whole-record-read"]),
    "deletion": (["documents.delete", "capabilities.no-head-on-delete"], ["documents.attestation"]),
    "size_cap": (["encoding.body-cap"], ["capabilities.whole-record-read"]),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_node_is_caught(name: str, tmp_path: Path) -> None:
    catching, healthy = BROKEN[name]
    launcher = LAUNCHERS / f"launch_without_{name}.py"
    assert launcher.exists()
    report_path = tmp_path / "report.json"
    process = run_suite(
        "--launch",
        f"{shlex.quote(sys.executable)} {shlex.quote(str(launcher))}",
        "--only",
        ",".join(catching + healthy),
        "--json",
        str(report_path),
        "--log",
        str(tmp_path / "node.log"),
        "-q",
        timeout=LAUNCHER_TIMEOUT,
    )
    output = f"{process.stdout}\n{process.stderr}\nnode log:\n{(tmp_path / 'node.log').read_text()[-3000:]}"
    assert process.returncode == 1, output
    statuses = by_status(json.loads(report_path.read_text()))
    assert set(catching) <= statuses["failed"], (
        f"not caught by {set(catching) - statuses['failed']}\n{output}"
    )
    assert set(healthy) <= statuses["passed"], f"the broken node fails more than one check\n{output}"


def load(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


def test_launcher_edits_a_function_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = load("_broken", LAUNCHERS / "_broken.py", monkeypatch)
    source = tmp_path / "edited_module.py"
    source.write_text(
        "from __future__ import annotations\n\n\n"
        "def f(x: Unknown) -> str:\n"
        "    if x > 1:\n"
        '        return "big"\n'
        '    return "small"\n\n\n'
        "def g() -> str:\n"
        "    return f(5)\n"
    )
    module = load("edited_module", source, monkeypatch)
    alias = module.f  # as another module's `from edited_module import f` holds it
    broken.edit(module.f, ("if x > 1:", "if x > 10:"), ('return "small"', 'return "tiny"'))
    assert (alias(5), module.g(), alias(50)) == ("tiny", "tiny", "big")
    with pytest.raises(SystemExit, match="edited twice"):
        broken.edit(module.f, ("x", "y"))
    with pytest.raises(SystemExit, match="out of date"):
        broken.edit(module.g, ("return f(6)", "return f(7)"))
    with pytest.raises(SystemExit, match="out of date"):
        broken.replace(module, "h", lambda: None)
    assert module.g() == "tiny"


def test_every_launcher_is_tested() -> None:
    launchers = {p.stem.removeprefix("launch_without_") for p in LAUNCHERS.glob("launch_without_*.py")}
    assert launchers == set(BROKEN)
    assert len(launchers) == 12
    registered = {c.id for c in all_cases()}
    for catching, healthy in BROKEN.values():
        assert catching and set(catching + healthy) <= registered


# --- 3. the framework ------------------------------------------------------------------------------


async def _nothing(s: Any) -> None:
    """Does nothing."""


def fake(
    case_id: str, requirements: tuple[str, ...] = ("API-1",), *tags: str, adversarial: bool = False
) -> Case:
    area = case_id.split(".", 1)[0]
    all_tags = {area, *tags} | ({"adversarial"} if adversarial else set())
    return Case(case_id, f"title of {case_id}", requirements, frozenset(all_tags), adversarial, _nothing)


FAKES = [
    fake("basics.profile", ("API-7", "SIG-1")),
    fake("capabilities.expired", ("CAP-9",), adversarial=True),
    fake("capabilities.revoked-link", ("CAP-10", "API-7"), "revocation", adversarial=True),
    fake("documents.fetch", ("API-22",)),
    fake("capabilities2.other", ("CAP-1",)),
]


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


@pytest.mark.parametrize(
    ("only", "expected"),
    [
        (set(), [c.id for c in FAKES]),
        ({"capabilities"}, ["capabilities.expired", "capabilities.revoked-link"]),
        ({"adversarial"}, ["capabilities.expired", "capabilities.revoked-link"]),
        ({"revocation"}, ["capabilities.revoked-link"]),
        ({"documents.fetch"}, ["documents.fetch"]),
        ({"capabilities."}, ["capabilities.expired", "capabilities.revoked-link"]),
        ({"capabilities2."}, ["capabilities2.other"]),
        ({"capabilities.exp"}, []),  # a prefix ends with "."; this is neither an id nor a tag
        ({"API-7"}, ["basics.profile", "capabilities.revoked-link"]),
        ({"CAP-9", "documents"}, ["capabilities.expired", "documents.fetch"]),
        ({"nothing"}, []),
    ],
)
def test_select(only: set[str], expected: list[str]) -> None:
    assert ids(select(FAKES, only)) == expected


@pytest.fixture
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    monkeypatch.setattr(registry, "CASES", cases)
    return cases


def test_case_registers_with_its_tags_and_title(empty_registry: dict[str, Case]) -> None:
    @case("area.some-thing", requires=["API-1", "CAP-12"], tags=("extra",), adversarial=True)
    async def function(s: Any) -> None:
        """First line is the title.

        More text that is not.
        """

    registered = empty_registry["area.some-thing"]
    assert registered.title == "First line is the title."
    assert registered.requirements == ("API-1", "CAP-12")
    assert registered.tags == {"area", "extra", "adversarial"}
    assert registered.adversarial and registered.area == "area" and registered.run is function

    @case("area.plain", requires=("API-2",))
    async def plain(s: Any) -> None:
        """Plain."""

    assert empty_registry["area.plain"].tags == {"area"} and not empty_registry["area.plain"].adversarial


@pytest.mark.parametrize(
    ("case_id", "requires", "docstring", "message"),
    [
        ("Area.upper", ["API-1"], "Doc.", "malformed"),
        ("area..double-dot", ["API-1"], "Doc.", "malformed"),
        ("area.under_score", ["API-1"], "Doc.", "malformed"),
        ("area.trailing.", ["API-1"], "Doc.", "malformed"),
        ("area.no-requirements", [], "Doc.", "requirements"),
        ("area.bad-requirement", ["api-1"], "Doc.", "requirements"),
        ("area.bad-requirement2", ["API1"], "Doc.", "requirements"),
        ("area.half-bad", ["API-1", "[API-2]"], "Doc.", "requirements"),
        ("area.no-doc", ["API-1"], None, "docstring"),
    ],
)
def test_case_refuses_bad_registrations(
    empty_registry: dict[str, Case], case_id: str, requires: list[str], docstring: str | None, message: str
) -> None:
    async def function(s: Any) -> None:
        pass

    function.__doc__ = docstring
    with pytest.raises(ValueError, match=message):
        case(case_id, requires=requires)(function)
    assert not empty_registry


def test_case_refuses_a_repeated_id(empty_registry: dict[str, Case]) -> None:
    case("area.once", requires=["API-1"])(_nothing)
    with pytest.raises(ValueError, match="registered twice"):
        case("area.once", requires=["API-2"])(_nothing)
    assert empty_registry["area.once"].requirements == ("API-1",)


def test_registered_cases_are_well_formed() -> None:
    cases = all_cases()
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        assert registry.CASE_ID.match(c.id) and c.title and c.requirements
        assert all(registry.REQUIREMENT.match(r) for r in c.requirements)
    unknown = coverage(cases).others
    known = set(must_ids()) | set(
        re.findall(r"\*\*\[([A-Z]+-\d+)\]\*\*", (ROOT / "spec" / "fedrecord.md").read_text())
    )
    assert not set(unknown) - known, (
        f"cases name requirement ids the spec does not have: {set(unknown) - known}"
    )


def test_coverage_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coverage_module, "must_requirements", lambda: ["A-1", "A-2", "B-1", "B-2"])
    cases = [fake("x.one", ("A-2", "S-9")), fake("x.two", ("A-2", "B-2")), fake("x.three", ("Z-1",))]
    result = coverage(cases)
    assert result.tested == ["A-2", "B-2"]  # in the list's order, each once
    assert result.untested == ["A-1", "B-1"]
    assert result.others == ["S-9", "Z-1"]
    assert result.percent == 50.0
    assert result.as_dict() == {"must": 4, "tested": 2, "percent": 50.0, "untested": ["A-1", "B-1"]}
    assert result.text().splitlines() == [
        "MUST requirements in spec/: 4",
        "tested by at least one case: 2 (50.0 %)",
        "untested (2): A-1, B-1",
    ]
    assert coverage([]).percent == 0.0
    assert coverage([]).text().endswith("untested (4): A-1, A-2, B-1, B-2")
    everything = coverage([fake("x.all", ("A-1", "A-2", "B-1", "B-2"))])
    assert everything.percent == 100.0 and everything.text().endswith("untested (0): none")
    assert Coverage(musts=[], tested=[], untested=[], others=[]).percent == 100.0
    thirds = Coverage(musts=["A-1", "A-2", "A-3"], tested=["A-1"], untested=["A-2", "A-3"], others=[])
    assert thirds.as_dict()["percent"] == 33.3


def test_the_installed_must_list_is_the_spec_s() -> None:
    assert coverage_module.must_requirements() == must_ids()


RESULTS = [
    Result(fake("basics.profile", ("API-7", "SIG-1")), "passed", "", 0.0123),
    Result(
        fake("capabilities.expired", ("CAP-9",), adversarial=True),
        "failed",
        'expected HTTP 403 expired, got HTTP 200 <&> "quoted"',
        1.5,
    ),
    Result(fake("documents.peer", ("API-22", "CAP-9")), "skipped", "needs a second node (--peer URL)", 0.0),
]


def test_summary_names_failures_and_their_requirements() -> None:
    lines = summary(RESULTS, coverage([r.case for r in RESULTS if r.status != "skipped"])).splitlines()
    assert lines[0] == "3 cases: 1 passed, 1 failed, 1 skipped"
    assert lines[1] == "failed:"
    assert lines[2].startswith("  capabilities.expired [CAP-9]: expected HTTP 403 expired")
    assert lines[3] == "requirements checked: 4; with a failure: CAP-9"
    assert re.fullmatch(r"MUST coverage of the cases run: \d+/\d+ \(\d+\.\d %\)", lines[4])
    assert summary([], coverage([])).splitlines()[0] == "0 cases: 0 passed, 0 failed, 0 skipped"


def test_json_report_of_fabricated_results(tmp_path: Path) -> None:
    data = report_data(RESULTS, coverage([r.case for r in RESULTS]), target="http://t", peer=None)
    path = tmp_path / "report.json"
    write_json(path, data)
    loaded = json.loads(path.read_text())
    jsonschema.validate(loaded, json.loads(REPORT_SCHEMA.read_text()), cls=jsonschema.Draft202012Validator)
    assert loaded["summary"] == {"total": 3, "passed": 1, "failed": 1, "skipped": 1}
    assert loaded["peer"] is None and loaded["target"] == "http://t"
    assert [t["status"] for t in loaded["tests"]] == ["passed", "failed", "skipped"]
    assert loaded["tests"][1]["requirements"] == ["CAP-9"]
    assert loaded["tests"][1]["tags"] == ["adversarial", "capabilities"]
    assert loaded["tests"][0]["seconds"] == 0.012
    # The schema is strict: an unknown status or a missing requirement list is refused.
    broken = json.loads(path.read_text())
    broken["tests"][0]["status"] = "errored"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(REPORT_SCHEMA.read_text()))
    broken["tests"][0]["status"] = "passed"
    broken["tests"][0]["requirements"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads(REPORT_SCHEMA.read_text()))


def test_junit_report_of_fabricated_results(tmp_path: Path) -> None:
    path = tmp_path / "report.xml"
    write_junit(path, RESULTS, target="http://t")
    assert path.read_bytes().startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    tree = ElementTree.parse(path)
    check_junit_schema(tree)
    suites = tree.getroot()
    [suite] = suites.findall("testsuite")
    assert (suites.get("tests"), suites.get("failures"), suites.get("errors")) == ("3", "1", "0")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    assert float(suite.get("time", "0")) == pytest.approx(1.512, abs=0.001)
    assert [p.attrib for p in suite.findall("properties/property")] == [
        {"name": "target", "value": "http://t"}
    ]
    passed, failed, skipped = suite.findall("testcase")
    assert passed.attrib == {
        "classname": "fedrecord-conformance.basics",
        "name": "basics.profile",
        "time": "0.012",
    }
    assert [p.get("value") for p in passed.findall("properties/property[@name='requirement']")] == [
        "API-7",
        "SIG-1",
    ]
    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "nonconformance"
    assert failure.get("message") == 'expected HTTP 403 expired, got HTTP 200 <&> "quoted"'
    assert (
        failure.text == 'title of capabilities.expired\nexpected HTTP 403 expired, got HTTP 200 <&> "quoted"'
    )
    mark = skipped.find("skipped")
    assert mark is not None and mark.get("message") == "needs a second node (--peer URL)"
    assert passed.find("failure") is None and passed.find("skipped") is None


class FakeSession:
    def __init__(self, skips: frozenset[str] = frozenset()) -> None:
        self.declared_skips = skips


async def test_runner_outcomes() -> None:
    async def passes(s: Any) -> None:
        """Passes."""

    async def fails(s: Any) -> None:
        """Fails."""
        raise Failed("the target said yes")

    async def skips(s: Any) -> None:
        """Skips."""
        raise Skipped("no peer")

    async def crashes(s: Any) -> None:
        """Crashes."""
        raise KeyError("code")

    def made(name: str, run: Any, *tags: str) -> Case:
        return Case(f"x.{name}", name, ("API-1",), frozenset({"x", *tags}), False, run)

    session: Any = FakeSession(frozenset({"optional-feature"}))
    seen: list[str] = []
    results = await run_cases(
        session,
        [
            made("passes", passes),
            made("fails", fails),
            made("skips", skips),
            made("crashes", crashes),
            made("declared", fails, "optional-feature"),
        ],
        on_result=lambda r: seen.append(r.case.id),
    )
    assert [(r.status, r.message) for r in results[:3]] == [
        ("passed", ""),
        ("failed", "the target said yes"),
        ("skipped", "no peer"),
    ]
    assert results[3].status == "failed" and results[3].message.startswith(
        "KeyError: 'code' (at test_conformance.py:"
    )
    assert results[4].status == "skipped" and "optional-feature" in results[4].message
    assert seen == [r.case.id for r in results]


async def test_runner_bounds_a_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrecord.conformance import runner

    monkeypatch.setattr(runner, "CASE_TIMEOUT", 0.05)

    async def hangs(s: Any) -> None:
        """Hangs."""
        await asyncio.sleep(10)

    result = await run_case(
        FakeSession(), Case("x.hangs", "hangs", ("API-1",), frozenset({"x"}), False, hangs)
    )  # type: ignore[arg-type]
    assert result.status == "failed" and result.message.startswith("no outcome within")
