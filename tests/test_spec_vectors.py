"""Our vectors (spec/vectors) against the code, and every vector object against the CDDL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedrecord.vectors.replay import replay

SPEC = Path(__file__).resolve().parent.parent / "spec"
FILES = sorted((SPEC / "vectors").glob("*.json"))


def _cases():
    for path in FILES:
        document = json.loads(path.read_text())
        for group in document["testGroups"]:
            for test in group["tests"]:
                yield pytest.param(group, test, id=f"{path.stem}-{test['tcId']}-{test['comment'][:40]}")


@pytest.mark.parametrize(("group", "test"), list(_cases()))
def test_vector(group, test):
    produced = replay(group, test)
    assert produced == test.get("error"), test["comment"]


def test_vector_files_follow_the_layout():
    total = invalid = 0
    for path in FILES:
        document = json.loads(path.read_text())
        assert document["schema"] == "fedrecord_vectors_v0.schema.json"
        ids = [t["tcId"] for g in document["testGroups"] for t in g["tests"]]
        assert ids == list(range(1, len(ids) + 1)) and document["numberOfTests"] == len(ids)
        for group in document["testGroups"]:
            for test in group["tests"]:
                assert test["result"] in ("valid", "invalid")
                assert ("error" in test) == (test["result"] == "invalid")
                assert all(flag in document["notes"] for flag in test["flags"])
                total += 1
                invalid += test["result"] == "invalid"
    assert total >= 150 and invalid * 2 >= total


def test_make_vectors_is_deterministic(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "fedrecord.vectors", str(tmp_path)], check=True, capture_output=True
    )
    for path in FILES:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
