"""Run another version of this project beside this one: the machinery of a benchmark's
``--against TREE``.

TREE is a directory holding another checkout of this project (for example one made with
``git worktree add /tmp/old <commit>``). Its modules have the same names as ours, so its code
never enters the benchmark's own process: it runs in processes of its own whose ``PYTHONPATH`` is
TREE (``tree_env``), with this interpreter and the dependencies installed for it. A benchmark
measures both versions the same way, in the same rounds, on the same machine under the same load
(the machines are shared and noisy), and reports for each figure the median over the rounds of
the ratio new/old taken within one round (``Comparison``). "New" is the checkout the benchmark is
run from (``ROOT``), "old" is TREE, whatever their ages.

A version's code runs in one of two ways:

- a program of its own (``bench_daemon.py`` starts TREE's ``ioasidsd run``) under
  ``tree_env(TREE)``, after ``check_tree`` has made sure that environment imports the project
  from TREE;
- a ``Worker``: this checkout's benchmark script run as ``SCRIPT --against-worker`` under
  ``tree_env(tree)``, so that the same workload drives either tree's modules. The script hands
  the functions it offers to ``serve``; the worker's first message says where each of the
  project's modules it has loaded was imported from, which the parent checks. Benchmarks run a
  worker for each side, this tree included, so that both versions run in the same kind of
  process.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
"""The checkout this file belongs to: the "new" side of a comparison."""

PACKAGES = ("ioasidsd", "cgroupfs")
"""The project's top-level packages (``pyproject.toml``): what must come from the tree."""

WORKER_FLAG = "--against-worker"
"""The option that makes a benchmark script a ``Worker`` (hidden from its ``--help``)."""

SIDES = ("new", "old")

_PROBE = ("import importlib, json, sys\n"
          "found = {}\n"
          "for name in sys.argv[1:]:\n"
          "    try:\n"
          "        found[name] = importlib.import_module(name).__file__\n"
          "    except ImportError:\n"
          "        pass\n"
          "print(json.dumps(found))\n")


class WorkerError(RuntimeError):
    """A worker failed: it died, or a call raised in it (the message holds its traceback)."""


def tree_env(tree: str | os.PathLike[str], base: Mapping[str, str] | None = None
             ) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) whose ``PYTHONPATH`` is TREE
    alone, resolved to an absolute path (the process may run in another directory)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(Path(tree).resolve())
    return env


def _outside(files: Iterable[str], tree: Path) -> list[str]:
    """The files of ``files`` that do not lie under ``tree``."""
    return [f for f in files if not Path(f).resolve().is_relative_to(tree)]


def check_tree(tree: str | os.PathLike[str]) -> Path:
    """TREE, resolved, once it is known to hold the project (``ioasidsd/__init__.py``) and a
    Python process under ``tree_env(TREE)`` imports the project's packages from it.

    Raises ``SystemExit`` saying why otherwise (for example a package TREE lacks, taken from
    this interpreter's installation instead)."""
    path = Path(tree).resolve()
    if not (path / "ioasidsd" / "__init__.py").is_file():
        raise SystemExit(f"--against {tree}: no ioasidsd/__init__.py there (not a checkout of "
                         "this project)")
    # -P: no script directory or working directory ahead of PYTHONPATH on sys.path
    probe = subprocess.run([sys.executable, "-P", "-c", _PROBE, *PACKAGES], env=tree_env(path),
                           capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise SystemExit(f"--against {tree}: importing the project failed:\n{probe.stderr}")
    found: dict[str, str] = json.loads(probe.stdout)
    if wrong := _outside(found.values(), path):
        raise SystemExit(f"--against {tree}: imported from elsewhere: {', '.join(wrong)}")
    return path


class Worker:
    """A process running ``script --against-worker`` with the project imported from ``tree``,
    answering calls to the functions the script hands to ``serve``.

    The constructor returns once the worker has started and its modules have been checked:
    ``origin`` maps each of the project's packages it loaded to the file it was imported from,
    and every project module loaded by then lies under ``tree`` (``WorkerError`` otherwise; its
    later imports are submodules of those packages, found in the same place). ``call`` runs one
    function there and returns its result (arguments and results go as JSON). ``close`` (or the
    end of a ``with`` block) ends the worker and waits for it. What the worker prints goes to
    this process's standard error.
    """

    def __init__(self, script: str | os.PathLike[str], tree: str | os.PathLike[str]) -> None:
        self.tree = Path(tree).resolve()
        self.proc = subprocess.Popen([sys.executable, str(script), WORKER_FLAG],
                                     env=tree_env(self.tree), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        try:
            hello = self._receive()
            self.origin: dict[str, str] = hello["origin"]
            if "ioasidsd" not in self.origin:
                raise WorkerError(f"the worker for {self.tree} did not import ioasidsd")
            if wrong := _outside(hello["modules"], self.tree):
                raise WorkerError(f"the worker for {self.tree} imported from elsewhere: "
                                  + ", ".join(wrong))
        except BaseException:
            self.close()
            raise

    def _receive(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise WorkerError(f"the worker for {self.tree} ended (exit status {code}); "
                              "its standard error is above")
        return json.loads(line)

    def call(self, name: str, *args: Any) -> Any:
        """The result of ``name(*args)`` run in the worker; ``WorkerError`` if it raised."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"call": name, "args": args}) + "\n")
        self.proc.stdin.flush()
        reply = self._receive()
        if "error" in reply:
            raise WorkerError(f"{name} in the worker for {self.tree}:\n{reply['error']}")
        return reply["result"]

    def close(self) -> None:
        """End the worker (end of its input) and wait for it. Idempotent."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):  # it died: wait() says how
                self.proc.stdin.close()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(functions: Mapping[str, Callable[..., Any]]) -> None:
    """The worker's side (in ``script --against-worker``): answer calls until the input ends.

    The first line written is ``{"origin": ..., "modules": [...]}`` (``ioasidsd`` is imported
    first if the script has not); then one line per call, ``{"result": ...}`` or ``{"error":
    traceback}``. The protocol keeps the original standard output to itself: anything else
    printed to it from here on (logs of the code under test) goes to standard error.
    """
    import importlib

    importlib.import_module("ioasidsd")
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    modules = {name: getattr(module, "__file__", None) for name, module in sys.modules.items()
               if name.split(".")[0] in PACKAGES}
    channel.write(json.dumps({
        "origin": {name: modules[name] for name in PACKAGES if name in modules},
        "modules": sorted(f for f in modules.values() if f),
    }) + "\n")
    channel.flush()
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"result": functions[request["call"]](*request["args"])}
        except Exception:
            reply = {"error": traceback.format_exc()}
        channel.write(json.dumps(reply) + "\n")
        channel.flush()


def in_turn(round_no: int) -> tuple[str, str]:
    """The order of the two sides in round ``round_no`` (from 0): new first in even rounds,
    old first in odd ones, so that neither always runs on the heels of the other."""
    return SIDES if round_no % 2 == 0 else (SIDES[1], SIDES[0])


def median_ratio(new: Sequence[float], old: Sequence[float]) -> float:
    """The median over rounds of ``new[i] / old[i]``: two runs made side by side in the same
    round (both sequences have one value a round)."""
    return statistics.median(a / b for a, b in zip(new, old, strict=True))


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


class Comparison:
    """The figures of both versions, one value a round for each side: ``add(side, figure,
    value)`` with side ``"new"`` or ``"old"``, figures in the order first added.

    ``as_dict`` gives, per figure, the medians of each side, the ratio new/old of each round
    and their median; ``print`` prints the same as a table after a line saying where each
    side's ``ioasidsd`` came from (``origins``: side -> file)."""

    def __init__(self, tree: str | os.PathLike[str]) -> None:
        self.tree = Path(tree).resolve()
        self.values: dict[str, dict[str, list[float]]] = {}
        self.origins: dict[str, str] = {}

    def add(self, side: str, figure: str, value: float) -> None:
        """One round's ``value`` of ``figure`` for ``side``."""
        assert side in SIDES, side
        self.values.setdefault(figure, {s: [] for s in SIDES})[side].append(value)

    def as_dict(self) -> dict[str, Any]:
        """``{"new": ROOT, "old": TREE, "origins": ..., "rounds": n, "figures": {figure:
        {"new": median, "old": median, "new/old": median ratio, "rounds": [ratio of each
        round]}}}``."""
        figures = {}
        rounds = 0
        for figure, sides in self.values.items():
            rounds = max(rounds, len(sides["new"]))
            figures[figure] = {
                "new": statistics.median(sides["new"]),
                "old": statistics.median(sides["old"]),
                "new/old": median_ratio(sides["new"], sides["old"]),
                "rounds": [a / b for a, b in zip(sides["new"], sides["old"], strict=True)],
            }
        return {"new": str(ROOT), "old": str(self.tree), "origins": dict(self.origins),
                "rounds": rounds, "figures": figures}

    def print(self) -> None:
        """Print the comparison: where each side came from, then one table row a figure."""
        result = self.as_dict()
        print(f"\nagainst {self.tree}: new = this tree ({ROOT}), old = {self.tree}")
        for side in SIDES:
            if side in self.origins:
                print(f"{side}: ioasidsd imported from {self.origins[side]}")
        print(f"\n| figure | new (median) | old (median) | new/old (median of "
              f"{result['rounds']} rounds) | new/old in each round |")
        print("|---|---|---|---|---|")
        for figure, f in result["figures"].items():
            each = ", ".join(f"{r:.2f}" for r in f["rounds"])
            print(f"| {figure} | {_fmt(f['new'])} | {_fmt(f['old'])} | {f['new/old']:.3f} | "
                  f"{each} |")


# ---------------------------------------------------------------------- layouts
# Modules that moved: a benchmark script imports them through these, so that it can drive a tree
# from before the move as well as this one.
def store_class() -> Any:
    """The durable store's class: ``ioasidsd.store.state.Store``, or
    ``ioasidsd.daemon.store.Store`` in trees from before the store had its own package."""
    try:
        from ioasidsd.store.state import Store
    except ImportError:
        from ioasidsd.daemon.store import Store  # type: ignore[no-redef]
    return Store


def uapi_module() -> Any:
    """The ``/dev/ioasid`` header: ``ioasidsd.model.ioasid_uapi``, or ``ioasidsd.userapi.uapi``
    in trees from before the device model moved into the model."""
    try:
        from ioasidsd.model import ioasid_uapi
    except ImportError:
        from ioasidsd.userapi import uapi as ioasid_uapi  # type: ignore[no-redef]
    return ioasid_uapi
