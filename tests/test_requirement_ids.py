"""The requirement ids of spec/fedrecord.md: defined once, cited only if defined, MUSTs on purpose.

A requirement is defined by a paragraph that starts with its id in bold, ``**[AREA-n]**``.  Its
level is MUST when the paragraph says MUST, MUST NOT, REQUIRED or SHALL, else SHOULD (or MAY).
The ids at level MUST are listed in spec/must-requirements.txt: removing one, weakening one or
adding one fails here until the list is changed too, so such changes are made on purpose.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "spec" / "fedrecord.md"
MUST_LIST = ROOT / "spec" / "must-requirements.txt"

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
    assert len(listed) == len(set(listed)), "spec/must-requirements.txt lists an id twice"
    levels = _levels()
    gone = sorted(i for i in listed if i not in levels)
    weakened = sorted(i for i in listed if i in levels and levels[i] != "MUST")
    unlisted = sorted(i for i, level in levels.items() if level == "MUST" and i not in listed)
    assert not gone, f"MUST requirements removed from the spec: {gone}"
    assert not weakened, f"requirements no longer MUST: {weakened}"
    assert not unlisted, f"new MUST requirements, add them to spec/must-requirements.txt: {unlisted}"


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
