"""Every VT-d behaviour B1-B43 of ``docs/behaviours.md`` has a test marked with it, named after it.

The test modules are read as source (``ast``), so the check does not depend on which tests were
selected.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
BEHAVIOURS = range(1, 44)


def _index() -> dict[int, list[str]]:
    tests: dict[int, list[str]] = defaultdict(list)
    for module in sorted(HERE.glob("test_*.py")):
        tree = ast.parse(module.read_text(), module.name)
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and ast.unparse(deco.func) == "pytest.mark.spec"
                        and isinstance(deco.args[0], ast.Constant)):
                    tests[deco.args[0].value].append(f"{module.name}::{node.name}")
    return tests


def test_each_behaviour_has_a_test() -> None:
    tests = _index()
    assert [n for n in BEHAVIOURS if not tests.get(n)] == []
    assert sorted(set(tests) - set(BEHAVIOURS)) == []


def test_test_names_carry_their_number() -> None:
    for number, names in _index().items():
        for name in names:
            function = name.split("::")[1]
            assert re.fullmatch(rf"test_b{number:02d}_[a-z0-9_]+", function), name
