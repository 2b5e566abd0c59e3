"""The model imports nothing above it: no face, no daemon, no ``System``, no host reads.

An AST scan of every module under ``ioasidsd/model/`` (imports under ``TYPE_CHECKING`` and
inside functions included). It covers only this rule; the full layering is a later change's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ioasidsd.model

MODEL = Path(ioasidsd.model.__file__).parent
FORBIDDEN = ("ioasidsd.userapi", "ioasidsd.daemon", "ioasidsd.system", "ioasidsd.host", "cgroupfs")
"""What the model must not import: faces, the daemon, the wiring above it, the host's files."""


def imported(source: str, module: str) -> set[str]:
    """Every module name that ``source`` (the text of module ``module``, dotted) imports: for
    ``from X import y``, both ``X`` and ``X.y`` (``y`` may be a submodule); relative imports
    resolved against ``module``'s package."""
    names: set[str] = set()
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


def model_modules() -> list[tuple[str, Path]]:
    return [(".".join(("ioasidsd", "model", *path.relative_to(MODEL).with_suffix("").parts)),
             path) for path in sorted(MODEL.rglob("*.py"))]


def test_the_model_imports_no_face_daemon_or_system() -> None:
    modules = model_modules()
    assert any(name == "ioasidsd.model.ioasid_device" for name, _ in modules)
    found = {name: forbidden(imported(path.read_text(encoding="utf-8"), name))
             for name, path in modules}
    assert {name: bad for name, bad in found.items() if bad} == {}
    # the scan does see the model's own imports
    assert "ioasidsd.model.ioasid_uapi" in imported(
        (MODEL / "ioasid_device.py").read_text(encoding="utf-8"), "ioasidsd.model.ioasid_device")


def test_the_scan_catches_every_form_of_import() -> None:
    source = "\n".join((
        "import cgroupfs.files",
        "from ioasidsd import system",
        "from ..userapi import server",
        "from ioasidsd.daemon.store import Store",
        "if TYPE_CHECKING:",
        "    from ioasidsd.host import ProcessSource",
        "def late():",
        "    import ioasidsd.userapi.client",
        "from ioasidsd.model.core import IoasidCore",
        "from . import errors",
    ))
    assert forbidden(imported(source, "ioasidsd.model.x")) == [
        "cgroupfs.files", "ioasidsd.daemon.store", "ioasidsd.daemon.store.Store",
        "ioasidsd.host", "ioasidsd.host.ProcessSource", "ioasidsd.system",
        "ioasidsd.userapi", "ioasidsd.userapi.client", "ioasidsd.userapi.server"]
