"""``python -m fedrecord.vectors DIR``: write every vector file into DIR, deterministically."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from . import capability_cases, cbor_cases, crypto_cases, identity_cases, record_cases, sync_cases
from .format import VectorFile

FILES: dict[str, Callable[[], VectorFile]] = {
    "cbor_strict.json": cbor_cases.build,
    "did_key.json": identity_cases.build,
    "signed_records.json": record_cases.build,
    "capabilities.json": capability_cases.build,
    "stream.json": crypto_cases.build_stream,
    "sealed_box.json": crypto_cases.build_sealed_box,
    "key_wraps.json": crypto_cases.build_key_wraps,
    "documents.json": crypto_cases.build_documents,
    "sync.json": sync_cases.build,
}


def main(argv: list[str]) -> int:
    target = Path(argv[1] if len(argv) > 1 else "spec/vectors")
    target.mkdir(parents=True, exist_ok=True)
    total = invalid = 0
    for name, build in FILES.items():
        document = build().to_json()
        (target / name).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
        cases = [t for g in document["testGroups"] for t in g["tests"]]
        total += len(cases)
        invalid += sum(1 for t in cases if t["result"] == "invalid")
        print(f"{name:22} {len(cases):4} cases")
    print(f"{'total':22} {total:4} cases, {invalid} invalid")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
