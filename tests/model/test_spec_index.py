"""Every behaviour 1-81 of ``docs/behaviours.md`` has exactly one test, marked with it.

The two spec modules are read as source (``ast``), so the check does not depend on which tests
were selected or how pytest imported them.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MODULES = ("test_spec_core.py", "test_spec_cgroup.py")
BEHAVIOURS = range(1, 82)


def _spec_marks(node: ast.FunctionDef) -> list[int]:
    """The numbers of the ``@pytest.mark.spec(N)`` decorators of a function."""
    numbers = []
    for deco in node.decorator_list:
        if (
            isinstance(deco, ast.Call)
            and ast.unparse(deco.func) == "pytest.mark.spec"
            and len(deco.args) == 1
            and isinstance(deco.args[0], ast.Constant)
        ):
            numbers.append(deco.args[0].value)
    return numbers


def _index() -> dict[int, list[str]]:
    tests: dict[int, list[str]] = defaultdict(list)
    for module in MODULES:
        tree = ast.parse((HERE / module).read_text(), module)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = _spec_marks(node)
                assert len(marks) == 1, f"{module}::{node.name} has spec marks {marks}"
                tests[marks[0]].append(f"{module}::{node.name}")
    return tests


def test_each_behaviour_has_exactly_one_test() -> None:
    tests = _index()
    missing = [n for n in BEHAVIOURS if not tests.get(n)]
    doubled = {n: names for n, names in tests.items() if len(names) > 1}
    unknown = sorted(set(tests) - set(BEHAVIOURS))
    assert (missing, doubled, unknown) == ([], {}, [])


def test_test_names_carry_their_number() -> None:
    for number, (name,) in _index().items():
        function = name.split("::")[1]
        assert re.fullmatch(rf"test_{number:02d}_[a-z0-9_]+", function), name


def test_the_spec_marker_is_registered(pytestconfig: pytest.Config) -> None:
    markers = pytestconfig.getini("markers")
    assert any(line.startswith("spec(") for line in markers)
