"""The core is sans-I/O (brief section 4): no network or database libraries, no clock, no randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parent.parent / "src" / "fedrecord" / "core"
FORBIDDEN_MODULES = {
    "aiohttp",
    "aiosqlite",
    "asyncio",
    "socket",
    "sqlite3",
    "random",
    "secrets",
    "time",
    "datetime",
    "threading",
    "subprocess",
}
FORBIDDEN_CALLS = {("os", "urandom"), ("nacl.utils", "random"), ("os", "getrandom")}


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_module_does_no_io_and_draws_no_randomness(path):
    tree = ast.parse(path.read_text())
    for module, name in _imports(tree):
        assert module.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {module}"
        assert (module, name) not in FORBIDDEN_CALLS, f"{path.name} imports {module}.{name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in FORBIDDEN_CALLS, (
                f"{path.name} uses {node.value.id}.{node.attr}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in {"open", "print", "input"}, f"{path.name} calls {node.func.id}()"


def test_the_check_sees_a_forbidden_import(tmp_path):
    tree = ast.parse("import asyncio\nfrom aiohttp import web\n")
    assert {m for m, _ in _imports(tree)} == {"asyncio", "aiohttp"}
