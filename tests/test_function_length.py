"""No function or method in the package is longer than :data:`MAX_LINES` lines (issue 29).

How a function is measured: from its ``def`` line (``async def`` too) to the last line of
its body, as ``ast`` reports them (``end_lineno - lineno + 1``). Decorators are not counted;
the signature, the docstring, blank lines and comments inside the body are; comments after
the last statement are not. A nested function is measured on its own, and its lines count
towards the function around it as well. A function past the limit should be split where a
part has a name of its own, not cut at an arbitrary line.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "efficientdet"
MAX_LINES = 100


def function_lengths(source: str) -> list[tuple[int, str, int]]:
    """``(line of the def, qualified name, length in lines)`` of every function and method in
    ``source``, by line; methods are named ``Class.method``, nested functions
    ``outer.inner``."""
    found: list[tuple[int, str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                name = prefix + child.name
                found.append((child.lineno, name, child.end_lineno - child.lineno + 1))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sorted(found)


def too_long(source: str, limit: int = MAX_LINES) -> list[tuple[int, str, int]]:
    """The functions of ``source`` longer than ``limit`` lines."""
    return [entry for entry in function_lengths(source) if entry[2] > limit]


SNIPPET = '''\
import functools


@functools.cache
def decorated(
    a: int,
) -> int:
    return a


class Box:
    def method(self) -> None:
        def inner() -> int:
            return 1

        # a comment inside the body counts
        inner()
    # a comment after the body does not

    async def fetch(self) -> None:
        """Only a docstring."""
'''


def test_the_counter_measures_a_hand_written_snippet() -> None:
    assert function_lengths(SNIPPET) == [
        (5, "decorated", 4),  # lines 5-8: the decorator on line 4 is not counted
        (12, "Box.method", 6),  # lines 12-17
        (13, "Box.method.inner", 2),
        (20, "Box.fetch", 2),
    ]


def test_the_limit_is_over_100_lines() -> None:
    at_limit = "def f() -> None:\n" + "    x = 1\n" * (MAX_LINES - 1)
    over = "def g() -> None:\n" + "    x = 1\n" * MAX_LINES
    assert too_long(at_limit) == []
    assert too_long(over) == [(1, "g", MAX_LINES + 1)]
    assert too_long(SNIPPET, limit=5) == [(12, "Box.method", 6)]


def test_no_function_in_the_package_is_over_the_limit() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert files, f"no source files under {PACKAGE}"
    offenders = [
        f"{path.relative_to(PACKAGE.parents[1])}:{line} {name}: {length} lines"
        for path in files
        for line, name, length in too_long(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, (
        f"functions over {MAX_LINES} lines (split them where a part has a name of its own):\n"
        + "\n".join(offenders)
    )
