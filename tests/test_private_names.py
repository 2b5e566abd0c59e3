"""No module of the packages (``ioasidsd``, ``cgroupfs``) touches another module's private names.

The rule, checked on the source with ``ast`` (nothing is imported or run):

* A *private name* begins with one underscore: ``_x``. Dunder names (``__x__``) and
  name-mangled names (``__x``) are not private names here.
* A module *defines* a private name when it has a ``def``/``class`` of that name, binds it as
  a variable, parameter or import alias, assigns or deletes ``self._x``/``cls._x``, or lists
  it in a ``__slots__``.
* Through ``self`` or ``cls`` any private name may be used: that is the object's own state.
* Through any other receiver (``core._sets``, ``other._counts``, ``super()._x``), whether read,
  assigned or deleted, and by ``getattr``/``hasattr``/``setattr``/``delattr`` with a constant
  name, a private name may be used only when the module itself defines it and no other scanned
  module does. A name defined in two modules is ambiguous (the receiver may be the other's);
  one defined in none belongs to a module outside the packages.
* ``from m import _x`` is a use of ``m``'s private name, whatever ``m`` is.
* The only exceptions are the standard library's documented names in ``STDLIB_DOCUMENTED``,
  and only while no scanned module defines the same name.

A module that needs what another keeps private asks the owner for a public, documented accessor.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ioasidsd", "cgroupfs")
OWN = frozenset({"self", "cls"})
ATTR_FUNCTIONS = frozenset({"getattr", "hasattr", "setattr", "delattr"})

#: Underscore names that the standard library documents as public, with where.
STDLIB_DOCUMENTED = {
    "_exit": "os._exit: exit without cleanup (os module documentation)",
    "_USE_VFORK": "subprocess._USE_VFORK: switch vfork off (subprocess documentation, 3.11)",
    "_value_": "Enum._value_: a member's value (enum documentation, supported _sunder_ names)",
}


@dataclass(frozen=True)
class Use:
    """One use of a private name through a receiver other than ``self``/``cls``."""

    module: str
    line: int
    name: str
    text: str  # the source of the use, for the report

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


def is_private(name: str) -> bool:
    """Whether ``name`` is a private name: one leading underscore, not a dunder or mangled."""
    return name.startswith("_") and not name.startswith("__")


def defined_names(tree: ast.Module) -> set[str]:
    """The private names that the module ``tree`` defines (see the module docstring); a
    name that ``from m import`` brings in without ``as`` is ``m``'s, not the module's."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Import):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):  # ``from m import _x`` is a use, not a definition
            names.update(alias.asname for alias in node.names if alias.asname)
        elif (isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load)
              and isinstance(node.value, ast.Name) and node.value.id in OWN):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets):
            names.update(c.value for c in ast.walk(node.value)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return {name for name in names if is_private(name)}


def private_uses(tree: ast.Module, module: str) -> list[Use]:
    """Every use in ``tree`` of a private name through a receiver other than ``self``/``cls``,
    by attribute, by an attribute function with a constant name, or by ``from m import _x``
    (with ``from``, the name is reported as ``from:_x``: it is never the module's own)."""
    uses: list[Use] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id in OWN):
                uses.append(Use(module, node.lineno, node.attr, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ATTR_FUNCTIONS and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and is_private(node.args[1].value)):
            receiver = node.args[0]
            if not (isinstance(receiver, ast.Name) and receiver.id in OWN):
                uses.append(Use(module, node.lineno, node.args[1].value, ast.unparse(node)))
        elif isinstance(node, ast.ImportFrom):
            uses.extend(Use(module, node.lineno, f"from:{alias.name}",
                            f"from {'.' * node.level}{node.module or ''} import {alias.name}")
                        for alias in node.names if is_private(alias.name))
    return uses


def violations(sources: dict[str, str]) -> list[Use]:
    """The uses, in the modules ``sources`` (module name -> source), that break the rule."""
    trees = {module: ast.parse(source) for module, source in sources.items()}
    definers: dict[str, set[str]] = {}
    for module, tree in trees.items():
        for name in defined_names(tree):
            definers.setdefault(name, set()).add(module)
    bad = []
    for module, tree in trees.items():
        for use in private_uses(tree, module):
            owners = definers.get(use.name, set())
            if owners == {module}:
                continue  # the module's own, and no other module's
            if not owners and use.name in STDLIB_DOCUMENTED:
                continue
            bad.append(use)
    return sorted(bad, key=lambda use: (use.module, use.line, use.text))


def package_sources() -> dict[str, str]:
    """Every module of the packages, by path relative to the repository."""
    return {str(path.relative_to(ROOT)): path.read_text()
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


# ---------------------------------------------------------------------- the packages
def test_no_module_uses_another_modules_private_names() -> None:
    sources = package_sources()
    assert len(sources) > 50  # the scan sees the packages
    bad = violations(sources)
    assert not bad, "private names used across modules:\n" + "\n".join(map(str, bad))


# ---------------------------------------------------------------------- the rule itself
OWNER = """
class Core:
    __slots__ = ("_slot",)

    def __init__(self):
        self._sets = {}
        self._slot = 0

    def _enter(self):
        return self._sets

    def merge(self, other):
        return other._sets, other._slot, type(self)._enter
"""


def test_reading_another_modules_private_attribute_is_reported() -> None:
    bad = violations({"owner": OWNER, "reader": "def f(core):\n    return core._sets\n"})
    assert [(u.module, u.line, u.text) for u in bad] == [("reader", 2, "core._sets")]


def test_writes_deletes_and_attribute_functions_are_uses_too() -> None:
    reader = ("def f(core):\n    core._sets = {}\n    del core._slot\n"
              "    return getattr(core, '_enter'), hasattr(core, '__dict__')\n")
    bad = violations({"owner": OWNER, "reader": reader})
    assert [u.name for u in bad] == ["_sets", "_slot", "_enter"]


def test_a_modules_own_names_through_any_receiver_are_allowed() -> None:
    assert violations({"owner": OWNER}) == []


def test_self_and_cls_may_use_any_private_name() -> None:
    reader = ("class C:\n    def f(self):\n        return self._sets\n"
              "    @classmethod\n    def g(cls):\n        return cls._enter\n")
    assert violations({"owner": OWNER, "reader": reader}) == []


def test_a_name_defined_in_two_modules_is_ambiguous() -> None:
    reader = ("class R:\n    def __init__(self):\n        self._sets = 1\n\n"
              "def f(core):\n    return core._sets\n")
    bad = violations({"owner": OWNER, "reader": reader})
    assert [(u.module, u.text) for u in bad] == [("owner", "other._sets"), ("reader", "core._sets")]


def test_dunder_and_mangled_names_are_not_private_names() -> None:
    reader = "def f(x):\n    return x.__class__, x._Core__secret, x.__secret\n"
    bad = violations({"owner": OWNER, "reader": reader})
    assert [u.text for u in bad] == ["x._Core__secret"]  # a mangled name spelt out is private


def test_importing_a_private_name_is_reported() -> None:
    bad = violations({"owner": OWNER, "reader": "from owner import _enter\nfrom . import _x\n"})
    assert [u.text for u in bad] == ["from owner import _enter", "from . import _x"]


def test_documented_stdlib_names_pass_unless_a_module_defines_them() -> None:
    reader = "import os\n\ndef f(m):\n    os._exit(0)\n    return m._value_, m._other\n"
    assert [u.text for u in violations({"reader": reader})] == ["m._other"]
    owner = "class E:\n    def __init__(self):\n        self._value_ = 1\n"
    bad = violations({"reader": reader, "owner": owner})
    assert [u.text for u in bad] == ["m._other", "m._value_"]
