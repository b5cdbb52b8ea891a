"""The requirement ids of spec/fedrecord.md: defined once, cited only if defined, MUSTs on purpose.

A requirement is defined by a paragraph that starts with its id in bold, ``**[AREA-n]**``.  Its
level is MUST when the paragraph says MUST, MUST NOT, REQUIRED or SHALL, else SHOULD (or MAY).
The ids at level MUST are listed in src/fedrecord/conformance/must-requirements.txt (the list the
conformance suite counts its coverage against, installed with it): removing one, weakening one or
adding one fails here until the list is changed too, so such changes are made on purpose.

The spec is one file: the HTTP message signatures (section 14, ``[HTTP-n]``) and the node HTTP
API (section 15, ``[API-n]``) are sections of it, and code, tests and benchmarks cite their ids
in brackets like every other id.  The fixed example of section 14.7 is checked against the code.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from fedrecord.core import SigningIdentity
from fedrecord.http.message_signatures import sign_request, sign_response

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "fedrecord.md"
MUST_LIST = ROOT / "src" / "fedrecord" / "conformance" / "must-requirements.txt"

ID = r"[A-Z]+-\d+"
CITATION = re.compile(rf"\[({ID})\]")
DEFINITION = re.compile(rf"\*\*\[({ID})\]\*\*")
ABSOLUTE = re.compile(r"\b(MUST|REQUIRED|SHALL)\b")
RECOMMENDATION = re.compile(r"\b(SHOULD|RECOMMENDED|MAY|OPTIONAL)\b")
INDEX_HEADING = "## Requirement index"


def _paragraphs() -> list[str]:
    """The paragraphs of the spec before its requirement index, code blocks left out.

    A paragraph that goes on after a code block ("... header", a block, "and a reader MUST
    ...") is one paragraph: text after a block that starts in lower case is joined to the text
    before the block.
    """
    lines = SPEC.read_text().split(INDEX_HEADING)[0].splitlines()
    blocks: list[tuple[str, list[str]]] = []  # ("text" | "code", lines)
    in_code = False
    for line in lines:
        if line.startswith("```"):
            if not in_code:
                blocks.append(("code", []))
            in_code = not in_code
        elif in_code:
            blocks[-1][1].append(line)
        elif not line.strip():
            blocks.append(("blank", []))
        elif blocks and blocks[-1][0] == "text":
            blocks[-1][1].append(line)
        else:
            blocks.append(("text", [line]))
    paragraphs: list[str] = []
    after_code = False
    for kind, content in blocks:
        if kind == "code":
            after_code = True
        elif kind == "text":
            text = "\n".join(content)
            if after_code and paragraphs and text[0].islower():
                paragraphs[-1] += "\n" + text
            else:
                paragraphs.append(text)
            after_code = False
    return paragraphs


def _body() -> str:
    return "\n\n".join(_paragraphs())


def _definitions() -> list[tuple[str, str]]:
    """(id, level) of every definition, in the order of the spec."""
    found = []
    for paragraph in _paragraphs():
        match = DEFINITION.match(paragraph)
        if match:
            level = "MUST" if ABSOLUTE.search(paragraph) else "SHOULD"
            found.append((match.group(1), level))
    return found


def _levels() -> dict[str, str]:
    return dict(_definitions())


def test_each_id_is_defined_once() -> None:
    ids = [identifier for identifier, _level in _definitions()]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"defined more than once: {duplicates}"
    assert len(ids) >= 50


def test_bold_ids_appear_only_as_definitions() -> None:
    """``**[X-n]**`` anywhere but at the start of a paragraph would be a second definition."""
    starts = sum(1 for p in _paragraphs() if DEFINITION.match(p))
    assert len(DEFINITION.findall(_body())) == starts


def test_every_definition_states_a_requirement() -> None:
    for paragraph in _paragraphs():
        match = DEFINITION.match(paragraph)
        if match:
            assert ABSOLUTE.search(paragraph) or RECOMMENDATION.search(paragraph), match.group(1)


def test_every_must_is_in_a_numbered_requirement() -> None:
    for paragraph in _paragraphs():
        if "BCP 14" in paragraph:  # the requirements-language boilerplate quotes the key words
            continue
        if ABSOLUTE.search(paragraph):
            assert DEFINITION.match(paragraph), f"MUST outside a requirement: {paragraph[:120]!r}"


def test_must_requirements_match_the_list() -> None:
    listed = [line.strip() for line in MUST_LIST.read_text().splitlines() if line.strip()]
    assert len(listed) == len(set(listed)), "must-requirements.txt lists an id twice"
    levels = _levels()
    gone = sorted(i for i in listed if i not in levels)
    weakened = sorted(i for i in listed if i in levels and levels[i] != "MUST")
    unlisted = sorted(i for i, level in levels.items() if level == "MUST" and i not in listed)
    assert not gone, f"MUST requirements removed from the spec: {gone}"
    assert not weakened, f"requirements no longer MUST: {weakened}"
    assert not unlisted, f"new MUST requirements, add them to src/fedrecord/conformance/must-requirements.txt: {unlisted}"


def _cited_in(paths: list[Path]) -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    for path in paths:
        for identifier in CITATION.findall(path.read_text(errors="replace")):
            cited.setdefault(identifier, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_every_id_cited_in_the_code_is_defined() -> None:
    sources = sorted((ROOT / "src").rglob("*.py"))
    cited = _cited_in(sources)
    assert cited, "no requirement cited in src/"
    undefined = {i: sorted(where) for i, where in cited.items() if i not in _levels()}
    assert not undefined, f"cited in src/ but not defined in the spec: {undefined}"


def test_every_id_cited_in_the_spec_files_is_defined() -> None:
    """The spec's own cross-references, the CDDL and the vector files."""
    spec_files = [SPEC, ROOT / "spec" / "fedrecord.cddl", *sorted((ROOT / "spec" / "vectors").glob("*.json"))]
    cited = _cited_in(spec_files)
    undefined = {i: sorted(where) for i, where in cited.items() if i not in _levels()}
    assert not undefined, f"cited but not defined: {undefined}"


def test_index_lists_every_requirement_with_its_level() -> None:
    index = SPEC.read_text().split(INDEX_HEADING)[1]
    rows = dict(re.findall(rf"^\| \[({ID})\] \| (MUST|SHOULD|MAY) \|", index, flags=re.MULTILINE))
    assert rows == _levels()


def test_index_is_in_order_and_counts_its_levels() -> None:
    """Index rows: areas in the order they first appear in the text, numbers ascending in each."""
    index = SPEC.read_text().split(INDEX_HEADING)[1]
    rows = re.findall(rf"^\| \[({ID})\] \| (MUST|SHOULD|MAY) \|", index, flags=re.MULTILINE)
    areas = list(dict.fromkeys(i.split("-")[0] for i, _level in _definitions()))
    in_order = sorted(
        _definitions(), key=lambda d: (areas.index(d[0].split("-")[0]), int(d[0].split("-")[1]))
    )
    assert rows == in_order
    musts = sum(1 for _i, level in rows if level == "MUST")
    stated = re.search(r"(\d+) requirements: (\d+) MUST, (\d+) SHOULD\.", index)
    assert stated is not None, "the index states how many requirements there are"
    assert tuple(int(n) for n in stated.groups()) == (len(rows), musts, len(rows) - musts)


def _section(number: int) -> str:
    """The text of ``## <number>. ...`` up to the next top-level heading."""
    text = SPEC.read_text()
    start = re.search(rf"^## {number}\. .*$", text, flags=re.MULTILINE)
    assert start is not None, f"no section {number}"
    end = re.search(r"^## ", text[start.end() :], flags=re.MULTILINE)
    return text[start.start() : start.end() + (end.start() if end else len(text))]


@pytest.mark.parametrize(
    ("number", "title", "area"), [(14, "HTTP message signatures", "HTTP"), (15, "Node HTTP API", "API")]
)
def test_http_sections_define_their_area(number: int, title: str, area: str) -> None:
    """Each area of the HTTP API is numbered from 1 upwards in the order of the text of its own section.

    Numbers may skip a block: work on separate subsections reserves its own range of ids
    (the resumed fetch of 15.15 starts at API-40) so that parallel changes do not collide.
    """
    section = _section(number)
    assert section.splitlines()[0] == f"## {number}. {title}"
    here = DEFINITION.findall(section)
    everywhere = [i for i, _level in _definitions() if i.startswith(area + "-")]
    numbers = [int(i.split("-")[1]) for i in here]
    assert here == everywhere
    assert numbers[0] == 1 and all(a < b for a, b in itertools.pairwise(numbers))
    assert len(here) >= (15 if area == "HTTP" else 30)


def test_http_signature_ids_keep_their_numbers() -> None:
    """The ids of the merged draft stay HTTP-1 to HTTP-15, all MUST."""
    levels = _levels()
    assert {i: levels[i] for i in levels if i.startswith("HTTP-")} == {
        f"HTTP-{n}": "MUST" for n in range(1, 16)
    }


def _source_files() -> list[Path]:
    return sorted(p for folder in ("src", "tests", "benchmarks") for p in (ROOT / folder).rglob("*.py"))


def test_every_id_cited_in_tests_and_benchmarks_is_defined() -> None:
    cited = _cited_in([p for p in _source_files() if not p.is_relative_to(ROOT / "src")])
    undefined = {i: sorted(where) for i, where in cited.items() if i not in _levels()}
    assert not undefined, f"cited but not defined in the spec: {undefined}"


def test_code_cites_ids_in_brackets() -> None:
    """A bare ``HTTP-7`` escapes the checks above; ``[HTTP-7]`` is checked."""
    areas = "|".join(sorted({i.split("-")[0] for i in _levels()}))
    # A quoted id ("API-7") is a value, as in the conformance cases' ``requires=[...]``, checked below.
    bare = re.compile(rf"(?<![\[\w\"-])((?:{areas})-\d+)\b(?![\]\"])")
    found = [
        f"{path.relative_to(ROOT)}: {match.group(1)}"
        for path in _source_files()
        if path.is_relative_to(ROOT / "src")
        for match in bare.finditer(path.read_text(errors="replace"))
    ]
    assert not found, f"requirement ids cited without brackets: {found}"


def test_the_error_code_table_is_the_core_s() -> None:
    """Section 10's codes and statuses are ``Code`` and ``HTTP_STATUS``, which the conformance suite expects."""
    from fedrecord.core.errors import HTTP_STATUS, Code

    section = SPEC.read_text().split("## 10. Error codes")[1].split("## 11. ")[0]
    table = {c: int(s) for c, s in re.findall(r"^\| `([a-z0-9-]+)` \| (\d{3}) \|", section, re.MULTILINE)}
    assert table == {code.value: HTTP_STATUS.get(code, 400) for code in Code}


def test_every_id_a_conformance_case_checks_is_defined() -> None:
    from fedrecord.conformance.registry import all_cases

    levels = _levels()
    undefined = {c.id: [r for r in c.requirements if r not in levels] for c in all_cases()}
    assert not {k: v for k, v in undefined.items() if v}, f"conformance cases name undefined ids: {undefined}"


def test_spec_files_named_in_the_code_exist() -> None:
    """The spec is spec/fedrecord.md and its companions: no citation of a spec file that is not there."""
    named = re.compile(r"\bspec/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
    missing = sorted(
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for path in [*sorted((ROOT / "src").rglob("*.py")), SPEC, ROOT / "spec" / "fedrecord.cddl"]
        for match in named.finditer(path.read_text(errors="replace"))
        if not (ROOT / match.group(0)).exists()
    )
    assert not missing, f"spec files cited but absent: {missing}"


def _code_blocks(section: str) -> list[str]:
    return re.findall(r"^```\n(.*?)\n```$", section, flags=re.MULTILINE | re.DOTALL)


def _fields(block: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in block.splitlines())


def test_example_of_section_14_7_is_what_the_code_signs() -> None:
    """The fixed example kept from the merged draft: request and answer fields, byte for byte."""
    example = _section(14).split("### 14.7 Example")[1]
    _request_base, request_fields, _answer_base, answer_fields = _code_blocks(example)
    signer = SigningIdentity.from_seed(bytes(32))
    assert signer.did in example and signer.public_key.hex() in example
    url, body = "https://patient.example/v0/inbox", bytes.fromhex("a1617600")
    request = sign_request(
        identity=signer,
        method="POST",
        url=url,
        headers={"Content-Type": "application/cbor"},
        body=body,
        now=1_790_000_000,
        nonce="AAECAwQFBgcICQoLDA0ODw",
        lifetime=60,
    )
    assert request == _fields(request_fields)
    answer = sign_response(
        identity=signer,
        status=200,
        headers={},
        body=body,
        request_method="POST",
        request_url=url,
        request_signature=request["Signature"],
        request_signature_input=request["Signature-Input"],
        now=1_790_000_001,
    )
    assert answer == _fields(answer_fields)
