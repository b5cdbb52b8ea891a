"""What the launchers share: disable one check of the reference node in this process, then serve it.

The patch lives only here, in the launcher's own process: the product has no
switch for it.  :func:`edit` recompiles one function of the node with exact
pieces of its source replaced and swaps the new code into the existing
function object, so every module that imported the function by name runs
the edited code.  When the source no longer holds the piece (the node was
refactored), the launcher exits before serving and the test that uses it
fails as a launch error, never as a silently healthy node.
"""

import __future__

import inspect
import sys
import textwrap
from collections.abc import Callable
from typing import Any


def edit(function: Callable[..., Any], *replacements: tuple[str, str]) -> None:
    """Replace, in ``function``'s source, each ``old`` of ``replacements`` (found exactly once) by its ``new``.

    All the edits of one function are given in one call: the source is read
    from the file, so a second call would start again from the unedited text.
    """
    target = inspect.unwrap(function)
    if getattr(target, "__edited_by_launcher__", False):
        sys.exit(f"launcher error: {target.__qualname__} is edited twice; give every edit in one call")
    lines, first = inspect.getsourcelines(target)
    source = textwrap.dedent("".join(lines))
    for old, new in replacements:
        if source.count(old) != 1:
            sys.exit(
                f"launcher out of date: {target.__qualname__} holds {source.count(old)} copies of {old!r}"
            )
        source = source.replace(old, new)
    # Keep the original line numbers in tracebacks of the edited function.
    code = compile(
        "\n" * (first - 1) + source,
        inspect.getsourcefile(target) or "<edited>",
        "exec",
        flags=__future__.annotations.compiler_flag,
        dont_inherit=True,
    )
    namespace: dict[str, Any] = {}
    exec(code, vars(sys.modules[target.__module__]), namespace)
    target.__code__ = namespace[target.__name__].__code__
    target.__edited_by_launcher__ = True  # type: ignore[attr-defined]


def replace(owner: object, name: str, value: object) -> None:
    """Set ``owner.name`` to ``value``, refusing a name ``owner`` does not have (a renamed check)."""
    if not hasattr(owner, name):
        sys.exit(f"launcher out of date: {owner!r} has no {name!r}")
    setattr(owner, name, value)


def serve() -> None:
    """Run the reference node as the contract's environment says (spec/conformance.md)."""
    from fedrecord.conformance.reference import main

    main()
