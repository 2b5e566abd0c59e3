"""The harness the kernel comparisons share (cgroup v1: ``test_cgroupfs_kernel``, v2:
``test_cgroupfs_v2_kernel``): a script of labelled file operations, run on a child of a kernel
hierarchy and on a child of our mount, whose results are compared step by step.

``ScriptTree`` runs one operation on one hierarchy and answers its result as text (an errno's
name when it fails). In a path, ``{c}`` is the controller's name; one starting with ``/`` is
relative to the hierarchy's root, any other to the test's child cgroup. In written data,
``{NAME}`` is the pid of the process named so in ``pids``. Each test module subclasses it with
the operations its script has beyond the common ones here. ``mismatches`` lists the steps whose
results differ other than as ``DIFFERENCES`` documents; ``undocumented`` the documented
differences that ``docs/cgroupfs.md`` does not name.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

NOBODY = 65534

Script = list[tuple[str, str, tuple[str, ...]]]
"""label, operation (``op_NAME`` of a ``ScriptTree``), arguments."""

Differences = dict[str, tuple[str, str]]
"""label: (the kernel's result, ours), for steps whose results differ as documented."""


class ScriptTree:
    """Runs a script's operations on one hierarchy: ``root`` its root directory, ``top`` the
    test's child cgroup, ``controller`` the name ``{c}`` stands for, ``pids`` the processes
    data may name, ``as_user(uid, what, path, *data)`` an operation as another user."""

    def __init__(self, root: Path, top: Path, controller: str, pids: dict[str, int],
                 as_user: Callable[..., str]) -> None:
        self.root, self.top, self.controller, self.pids = root, top, controller, pids
        self.as_user = as_user

    def path(self, rel: str) -> Path:
        rel = rel.replace("{c}", self.controller)
        return self.root / rel[1:] if rel.startswith("/") else self.top / rel

    def value(self, text: str) -> str:
        """Written data with the pids (and the controller's name) put in."""
        return text.format(**self.pids, c=self.controller)

    def normal(self, text: str) -> str:
        """A result with the controller's name written ``{c}``, comparable across
        hierarchies."""
        return text.replace(self.controller, "{c}")

    def run(self, op: str, args: tuple[str, ...]) -> str:
        try:
            result: str = getattr(self, "op_" + op)(*args)
        except OSError as exc:
            return errno.errorcode[exc.errno or 0]
        return result

    # ---------------------------------------------------------------- common operations
    def op_read(self, rel: str) -> str:
        return self.normal(self.path(rel).read_text())

    def op_write(self, rel: str, data: str) -> str:
        try:
            fd = os.open(self.path(rel), os.O_WRONLY)
        except OSError as exc:
            return "open " + errno.errorcode[exc.errno or 0]
        try:
            return f"ok {os.write(fd, self.value(data).encode())}"
        finally:
            os.close(fd)

    def op_mkdir(self, rel: str) -> str:
        os.mkdir(self.path(rel))
        return "ok"

    def op_rmdir(self, rel: str) -> str:
        os.rmdir(self.path(rel))
        return "ok"

    def op_rename(self, old: str, new: str) -> str:
        os.rename(self.path(old), self.path(new))
        return "ok"

    def op_chmod(self, rel: str, mode: str) -> str:
        os.chmod(self.path(rel), int(mode, 8))
        return "ok"

    def op_chown(self, rel: str, uid: str) -> str:
        os.chown(self.path(rel), int(uid), int(uid))
        return "ok"

    def op_write_as_nobody(self, rel: str, data: str) -> str:
        return self.as_user(NOBODY, "write", self.path(rel), self.value(data))

    def op_mkdir_as_nobody(self, rel: str) -> str:
        return self.as_user(NOBODY, "mkdir", self.path(rel))


def run_script(tree: ScriptTree, script: Script) -> dict[str, str]:
    """Every step's result, by label."""
    return {label: tree.run(op, args) for label, op, args in script}


def mismatches(script: Script, kernel: dict[str, str], ours: dict[str, str],
               differences: Differences) -> list[str]:
    """The steps whose results are not equal, or not the documented pair of results."""
    wrong = []
    for label, _op, _args in script:
        expected = differences.get(label, (kernel[label], kernel[label]))
        if (kernel[label], ours[label]) != expected:
            wrong.append(f"{label}: kernel {kernel[label]!r}, ours {ours[label]!r}, "
                         f"expected {expected!r}")
    return wrong


def undocumented(script: Script, differences: Differences) -> list[str]:
    """The labels of ``differences`` that ``docs/cgroupfs.md`` does not name (an
    ``AssertionError`` for a label the script does not have)."""
    labels = {label for label, _op, _args in script}
    assert set(differences) <= labels
    doc = (Path(__file__).parents[2] / "docs" / "cgroupfs.md").read_text()
    return [label for label in differences if f"`{label}`" not in doc]
