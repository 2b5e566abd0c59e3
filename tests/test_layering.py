"""The floors of the package, checked by import-linter's layers contract (``pyproject.toml``,
``[tool.importlinter]``): each package imports only from the floors below it, and the faces
(cgroupfs, the user API, the control API, the experiments, slices) never import each other;
inside ``ioasidsd.vtd`` the simulated hardware never imports the driver. See
docs/architecture.md."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``tree`` with the project's contract."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([LINT, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_floors_hold() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_an_import_against_the_floors_breaks_the_contract(tmp_path: Path) -> None:
    """The contract constrains: the model importing System, or one face importing another,
    is reported."""
    for package in ("ioasidsd", "cgroupfs"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    core = tmp_path / "ioasidsd" / "model" / "core.py"
    core.write_text(core.read_text() + "\nimport ioasidsd.system  # against the floors\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "ioasidsd.model.core -> ioasidsd.system" in done.stdout
    core.write_text((ROOT / "ioasidsd" / "model" / "core.py").read_text())
    server = tmp_path / "ioasidsd" / "control" / "server.py"
    server.write_text(server.read_text() + "\nimport cgroupfs.files  # a face importing a face\n")
    done = lint(tmp_path)
    assert done.returncode != 0 and "ioasidsd.control.server -> cgroupfs.files" in done.stdout
    server.write_text((ROOT / "ioasidsd" / "control" / "server.py").read_text())
    unit = tmp_path / "ioasidsd" / "vtd" / "hardware" / "unit.py"
    unit.write_text(unit.read_text() + "\nimport ioasidsd.vtd.driver.iommu  # hardware on driver\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "ioasidsd.vtd.hardware.unit -> ioasidsd.vtd.driver.iommu" in done.stdout


def test_slices_are_a_floor_beside_the_faces(tmp_path: Path) -> None:
    """Slices may not import a face, and no face may import slices."""
    for package in ("ioasidsd", "cgroupfs"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    names = tmp_path / "ioasidsd" / "slices" / "names.py"
    names.write_text(names.read_text() + "\nimport ioasidsd.control.verbs  # slices on a face\n")
    verbs = tmp_path / "ioasidsd" / "control" / "verbs.py"
    verbs.write_text(verbs.read_text() + "\nimport ioasidsd.slices.units  # a face on slices\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "ioasidsd.slices.names -> ioasidsd.control.verbs" in done.stdout
    assert "ioasidsd.control.verbs -> ioasidsd.slices.units" in done.stdout
