#!/usr/bin/env python3
"""Benchmark of the cgroupfs FUSE face, each figure side by side with the kernel.

1. echo+cat pairs per second on ``ioasids.max`` of our mount against ``pids.max`` of a child of
   the kernel's cgroup-v1 ``pids`` hierarchy, in alternating rounds. A pair is what
   ``echo 5 > f; cat f`` does to the file, without starting processes: open(O_WRONLY|O_TRUNC),
   write ``5\\n``, close; open, read until end of file, close. Target: at least 1/15 of the
   kernel's rate.
2. ``mkdir`` of 10,000 cgroups (flat, under one parent) on our mount and on the kernel's, then
   their ``rmdir``. Target: under 10 s on ours. Measured with ``System.on_change`` a no-op and,
   when ``ioasidsd.store.state`` can be imported, with the daemon's SQLite store as
   ``on_change`` (every mkdir committed before it returns).

3. ``--v2``: the v1 face's figures on our cgroup-v2 face too (``System(hierarchy="v2")`` with
   ``+ioasids`` in the root's ``cgroup.subtree_control``), served by a second child process,
   side by side with the v1 face: echo+cat pairs writing the same value and changing values,
   open+read+close of an unchanged ``ioasids.current``, each in interleaved slices per round
   (``interleaved``), and ``mkdir``/``rmdir`` of ``--mkdirs`` cgroups in alternating order.
   Each as the rate ratio v2/v1 and as the CPU time each face's server spent per operation
   (``/proc/PID/stat``, every thread), v1's over v2's: on a loaded machine the rates swing with
   the load, the CPU an operation costs much less. Target: at least 0.9.

4. Against a C file system (``bench/reference/onefile_fuse.c``: libfuse3's high-level API, one
   file, default options plus ``direct_io``, as LXCFS serves its files), built by this script
   with ``cc`` and served by a child process, in alternating rounds: echo+cat pairs on
   ``ioasids.max`` writing the value it has (``same``) and alternating two values so that every
   pair changes it (``changing``), against the same loops on its file (target: at least 1.0);
   open+read+close of an unchanged ``ioasids.current`` against the same on its file (target: at
   least 1.5); the kernel's ``pids.current`` alongside. With the daemon's store too when it can
   be imported.

5. ``--scale PARENTS CHILDREN`` (alone: the other figures are skipped): ``PARENTS`` cgroups of
   ``CHILDREN`` each (100 of 1,000 for the 100,000 cgroups of the target), on our mount and on
   the kernel's ``pids`` hierarchy, one after the other: ``mkdir`` of all, ``ls`` of each
   parent (``os.listdir``), open+read+close of each child's ``ioasids.current`` (``pids.current``),
   ``rmdir`` of all; each step's seconds and ours over the kernel's (target: at most 15), and
   the server's RSS before and with the cgroups (target: at most 2 KiB per cgroup).

Our file system is served by a child process, as the daemon serves it; the loops run here.
``--against TREE`` also serves another version's file system (its source tree, put on
``PYTHONPATH``) and runs its echo+cat loop in the same rounds, and the loops of 4 in the same
slices (with the store too, each with a store of its own), for before/after ratios that the
machine's load affects alike. Needs root, FUSE and ``/sys/fs/cgroup/pids``. Usage::

    bench_cgroupfs.py [--rounds 5] [--seconds 2] [--mkdirs 10000] [--against SOURCE_TREE] [--v2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KERNEL_PIDS = Path("/sys/fs/cgroup/pids")

SERVER = r"""
import sys
from ioasidsd.system import System
from cgroupfs import mount
mountpoint, state_dir = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    system = System(hierarchy=sys.argv[3])
    system.write_subtree_control("/", "+ioasids")
else:
    system = System()
if state_dir:
    try:
        from ioasidsd.store.state import Store
    except ImportError:  # a tree from before the store had its own package
        from ioasidsd.daemon.store import Store
    store = Store.open(state_dir)
    store.bind(system)
    system.on_change = store.apply
handle = mount(system, mountpoint)
print("ready", flush=True)
handle.wait()
"""


def have_store() -> bool:
    for module in ("ioasidsd.store.state", "ioasidsd.daemon.store"):
        try:
            __import__(module)
        except ImportError:
            continue
        return True
    return False


@contextlib.contextmanager
def served(mountpoint: Path, state_dir: str = "", tree: str | None = None, v2: bool = False):
    """Our file system, served by a child process until the block ends (``tree``: the source
    tree of another version to serve instead of this one; ``v2``: the cgroup-v2 face)."""
    env = cwd = None
    if tree is not None:
        cwd = os.path.abspath(tree)
        env = {**os.environ, "PYTHONPATH": cwd}
    argv = [sys.executable, "-c", SERVER, str(mountpoint), state_dir, *(["v2"] if v2 else [])]
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=cwd)
    try:
        assert server.stdout is not None
        if server.stdout.readline() != b"ready\n":
            raise SystemExit("the file system server did not start")
        SERVERS[mountpoint] = server.pid
        yield mountpoint
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


SERVERS: dict[Path, int] = {}
"""The pid of the process serving each of our mounts."""


def rss_kib(pid: int) -> int:
    """The resident set of ``pid``, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def scale_steps(top: Path, controller: str, parents: int,
                children: int) -> dict[str, float]:
    """The four steps of ``--scale`` under ``top``; seconds of each."""
    names = [top / f"p{i}" for i in range(parents)]
    kids = [[os.fsencode(p / f"c{j}") for j in range(children)] for p in names]
    current = [[k + os.fsencode(f"/{controller}.current") for k in row] for row in kids]
    out: dict[str, float] = {}
    start = time.perf_counter()
    for parent, row in zip(names, kids, strict=True):
        os.mkdir(parent)
        for kid in row:
            os.mkdir(kid)
    out["mkdir"] = time.perf_counter() - start
    start = time.perf_counter()
    for parent in names:
        os.listdir(parent)
    out["ls"] = time.perf_counter() - start
    start = time.perf_counter()
    for row in current:
        for path in row:
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)
    out["read"] = time.perf_counter() - start
    start = time.perf_counter()
    for parent, row in zip(names, kids, strict=True):
        for kid in row:
            os.rmdir(kid)
        os.rmdir(parent)
    out["rmdir"] = time.perf_counter() - start
    return out


def bench_scale(ours: Path, kernel: Path, parents: int, children: int) -> None:
    """``--scale``: each step on ours and on the kernel's, and the server's RSS."""
    pid = SERVERS[ours]
    (ours / "scale").mkdir()
    (kernel / "scale").mkdir()
    empty = rss_kib(pid)
    names = [ours / "scale" / f"p{i}" for i in range(parents)]
    for parent in names:  # the RSS with the cgroups, then removed again
        os.mkdir(parent)
        for j in range(children):
            os.mkdir(parent / f"c{j}")
    full = rss_kib(pid)
    for parent in names:  # and once every ioasids.current was read (the kernel holds them)
        for j in range(children):
            (parent / f"c{j}" / "ioasids.current").read_bytes()
    read = rss_kib(pid)
    for parent in names:
        for j in range(children):
            os.rmdir(parent / f"c{j}")
        os.rmdir(parent)
    mine = scale_steps(ours / "scale", "ioasids", parents, children)
    theirs = scale_steps(kernel / "scale", "pids", parents, children)
    count = parents * (children + 1)
    for step in ("mkdir", "ls", "read", "rmdir"):
        print(f"scale {parents}x{children}: {step}: ours {mine[step]:.2f} s, kernel "
              f"{theirs[step]:.2f} s, ours / kernel {mine[step] / theirs[step]:.1f} "
              f"(target <= 15)")
    print(f"scale {parents}x{children}: server RSS {empty / 1024:.1f} MiB empty, "
          f"{full / 1024:.1f} MiB with {count:,} cgroups: {(full - empty) / count * 1024:,.0f} "
          f"bytes per cgroup; {read / 1024:.1f} MiB once each current was read: "
          f"{(read - empty) / count * 1024:,.0f} bytes per cgroup (target <= 2048)")
    (ours / "scale").rmdir()
    (kernel / "scale").rmdir()


@contextlib.contextmanager
def kernel_cgroup():
    """A child of the kernel's pids hierarchy, removed (with its children) afterwards."""
    top = KERNEL_PIDS / f"ioasids-bench-{os.getpid()}"
    top.mkdir()
    try:
        yield top
    finally:
        for child in sorted(p for p in top.iterdir() if p.is_dir()):
            child.rmdir()
        top.rmdir()


REFERENCE_SOURCE = Path(__file__).parent / "reference" / "onefile_fuse.c"


def build_reference(work: Path) -> Path:
    """Compile the C reference file system into ``work``; its executable."""
    binary = work / "onefile_fuse"
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True,
                           text=True, check=False)
    if flags.returncode != 0:
        raise SystemExit("pkg-config fuse3 failed: the C reference needs libfuse3-dev "
                         "(scripts/bootstrap installs it)")
    subprocess.run(["cc", "-O2", "-o", str(binary), str(REFERENCE_SOURCE),
                    *flags.stdout.split()], check=True)
    return binary


@contextlib.contextmanager
def reference_served(binary: Path, mountpoint: Path):
    """The C reference mounted on ``mountpoint`` until the block ends; the path of its file."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([str(binary), str(mountpoint), "-f"],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the C reference file system did not mount")
            time.sleep(0.01)
        yield mountpoint / "value"
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def reads_for(path: Path, seconds: float) -> float:
    """open+read+close per second of ``path`` for about ``seconds`` (one read of a page, as a
    monitor polling a counter does)."""
    target = os.fsencode(path)
    rflags = os.O_RDONLY
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fd = os.open(target, rflags)
            os.read(fd, 4096)
            os.close(fd)
        done += 20
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def pairs_for(path: Path, seconds: float, values: tuple[bytes, ...] = (b"5\n",)) -> float:
    """echo+cat pairs per second on ``path`` for about ``seconds``, writing ``values`` in
    turn."""
    target = os.fsencode(path)
    wflags, rflags = os.O_WRONLY | os.O_TRUNC, os.O_RDONLY
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    turn = len(values)
    while True:
        for i in range(20):
            fd = os.open(target, wflags)
            os.write(fd, values[i % turn])
            os.close(fd)
            fd = os.open(target, rflags)
            while os.read(fd, 4096):
                pass
            os.close(fd)
        done += 20
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def bench_pairs(ours: Path, kernel: Path, rounds: int, seconds: float,
                other: Path | None = None) -> dict[str, float]:
    """Medians of echo+cat rates in alternating rounds: ``ours``, ``kernel`` and their ratio
    per round; with ``other`` (another version's mount) also ``other`` and ``vs_other``."""
    (ours / "bench").mkdir()
    ours_max, kernel_max = ours / "bench" / "ioasids.max", kernel / "pids.max"
    other_max = None
    if other is not None:
        (other / "bench").mkdir()
        other_max = other / "bench" / "ioasids.max"
        pairs_for(other_max, 0.2)
    pairs_for(ours_max, 0.2)  # warm up both
    pairs_for(kernel_max, 0.2)
    mine, theirs, others = [], [], []
    for r in range(rounds):
        theirs.append(pairs_for(kernel_max, seconds))
        if other_max is not None and r % 2:  # neither version always runs first
            others.append(pairs_for(other_max, seconds))
        mine.append(pairs_for(ours_max, seconds))
        if other_max is not None and not r % 2:
            others.append(pairs_for(other_max, seconds))
    (ours / "bench").rmdir()
    ratios = [m / k for m, k in zip(mine, theirs, strict=True)]
    figures = {"ours": statistics.median(mine), "kernel": statistics.median(theirs),
               "ratio": statistics.median(ratios)}
    if other is not None:
        (other / "bench").rmdir()
        figures["other"] = statistics.median(others)
        figures["other_ratio"] = statistics.median(o / k for o, k in zip(others, theirs,
                                                                          strict=True))
        figures["vs_other"] = statistics.median(m / o for m, o in zip(mine, others,
                                                                       strict=True))
    return figures


CHANGING = (b"5\n", b"6\n")


def bench_reference(ours: Path, reference: Path, kernel: Path, rounds: int,
                    seconds: float, other: Path | None = None) -> dict[str, list[float]]:
    """Per round, in alternating order (no side always first): echo+cat pairs/s on our
    ``ioasids.max`` and on the reference's file, writing the same value and changing values;
    open+read+close/s of our unchanged ``ioasids.current``, of the reference's file and of the
    kernel's ``pids.current``. Each figure's list of rounds, and ``*_ratio`` lists, ours over
    the reference's. With ``other`` (another version's mount) its loops run in the same
    slices: ``*_other``, ``*_other_ratio`` (its rate over the reference's) and ``*_vs_other``
    (ours over its)."""
    mounts = [ours] if other is None else [ours, other]
    for top in mounts:
        (top / "ref").mkdir()
        (top / "ref" / "ioasids.max").write_text("max")
        pairs_for(top / "ref" / "ioasids.max", 0.2)
        reads_for(top / "ref" / "ioasids.current", 0.2)
    pairs_for(reference, 0.2)
    reads_for(reference, 0.2)
    out: dict[str, list[float]] = {}
    loops = {
        "same": lambda path, t: pairs_for(path, t),
        "changing": lambda path, t: pairs_for(path, t, CHANGING),
        "reads": lambda path, t: reads_for(path, t),
    }
    for r in range(rounds):
        for name, loop in loops.items():
            file = "ioasids.current" if name == "reads" else "ioasids.max"
            paths = [ours / "ref" / file, reference]
            if other is not None:
                paths.append(other / "ref" / file)
            rates = interleaved_all(loop, paths, seconds, first=r)
            mine, theirs = rates[0], rates[1]
            out.setdefault(f"{name}_ours", []).append(mine)
            out.setdefault(f"{name}_ref", []).append(theirs)
            out.setdefault(f"{name}_ratio", []).append(mine / theirs)
            if other is not None:
                out.setdefault(f"{name}_other", []).append(rates[2])
                out.setdefault(f"{name}_other_ratio", []).append(rates[2] / theirs)
                out.setdefault(f"{name}_vs_other", []).append(mine / rates[2])
        out.setdefault("reads_kernel", []).append(reads_for(kernel / "pids.current", seconds))
    for top in mounts:
        (top / "ref").rmdir()
    return out


def interleaved_all(loop, paths: list[Path], seconds: float, first: int) -> list[float]:
    """``loop(path, t)`` on every path in ``SLICES`` rounds of slices of
    ``seconds / SLICES`` each, the order rotating every slice (``first`` rotates the start),
    so that every side sees the same moments of a loaded machine; the mean rate of each."""
    t = seconds / SLICES
    rates: list[list[float]] = [[] for _ in paths]
    n = len(paths)
    for i in range(SLICES):
        for k in range(n):
            side = (i + first + k) % n
            rates[side].append(loop(paths[side], t))
    return [statistics.fmean(r) for r in rates]


SLICES = 10


def interleaved(loop, mine: Path, theirs: Path, seconds: float, first: int) -> tuple[float, float]:
    """``loop(path, t)`` (a rate over ``t`` seconds) on both paths in ``SLICES`` alternating
    slices of ``seconds / SLICES`` each, so that both sides see the same moments of a loaded
    machine; the mean rate of each. ``first``: 0 when ours starts."""
    t = seconds / SLICES
    rates: tuple[list[float], list[float]] = ([], [])
    for i in range(SLICES):
        for side in ((0, 1) if (i + first) % 2 == 0 else (1, 0)):
            rates[side].append(loop(mine if side == 0 else theirs, t))
    return statistics.fmean(rates[0]), statistics.fmean(rates[1])


def print_reference(figures: dict[str, list[float]], label: str) -> None:
    med = {key: statistics.median(values) for key, values in figures.items()}
    rounds = len(figures["same_ratio"])
    for name, what, target in (("same", "echo+cat pairs/s, same value", 1.0),
                               ("changing", "echo+cat pairs/s, changing value", 1.0),
                               ("reads", "open+read+close/s of an unchanged current", 1.5)):
        each = ", ".join(f"{x:.2f}" for x in figures[f"{name}_ratio"])
        print(f"{label}: {what}: ours {med[f'{name}_ours']:,.0f}, C reference "
              f"{med[f'{name}_ref']:,.0f}, ours / reference {med[f'{name}_ratio']:.3f} "
              f"(median of {rounds} rounds: {each}; target >= {target})")
    print(f"{label}: open+read+close/s of the kernel's pids.current: "
          f"{med['reads_kernel']:,.0f}; ours / kernel "
          f"{med['reads_ours'] / med['reads_kernel']:.3f}")
    if "same_other" in figures:
        for name in ("same", "changing", "reads"):
            each = ", ".join(f"{x:.2f}" for x in figures[f"{name}_vs_other"])
            print(f"{label}: {name}: the other tree {med[f'{name}_other']:,.0f}/s, its / C "
                  f"reference {med[f'{name}_other_ratio']:.3f}; this tree / the other, same "
                  f"slices: {med[f'{name}_vs_other']:.3f} ({each})")


def cpu_seconds(pid: int) -> float:
    """CPU time process ``pid`` has used, all its threads (``utime + stime``)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Metered:
    """A loop (``loop(path, t)``: a rate over ``t`` seconds) that also adds up, per path, the
    operations it made and the CPU time the path's server spent meanwhile."""

    def __init__(self, loop, servers: dict[Path, int]) -> None:
        self.loop, self.servers = loop, servers
        self.ops: dict[Path, float] = {}
        self.cpu: dict[Path, float] = {}

    def __call__(self, path: Path, t: float) -> float:
        pid = self.servers[path]
        before, start = cpu_seconds(pid), time.perf_counter()
        rate = self.loop(path, t)
        self.ops[path] = self.ops.get(path, 0.0) + rate * (time.perf_counter() - start)
        self.cpu[path] = self.cpu.get(path, 0.0) + cpu_seconds(pid) - before
        return rate

    def cpu_per_op(self, path: Path) -> float:
        return self.cpu[path] / self.ops[path]


def mkdir_rmdir_metered(parent: Path, count: int, pid: int) -> dict[str, tuple[float, float]]:
    """``mkdir`` of ``count`` directories under ``parent``, then their ``rmdir``: for each,
    the rate and the CPU seconds per operation of the server ``pid``."""
    names = [os.fsencode(parent / f"c{i}") for i in range(count)]
    out = {}
    for step, call in (("mkdir", os.mkdir), ("rmdir", os.rmdir)):
        before, start = cpu_seconds(pid), time.perf_counter()
        for name in names:
            call(name)
        elapsed = time.perf_counter() - start
        out[step] = (count / elapsed, (cpu_seconds(pid) - before) / count)
    return out


def bench_faces(v1: Path, v2: Path, rounds: int, seconds: float,
                mkdirs: int) -> dict[str, list[float]]:
    """The v1 face against the v2 face, per round: for ``same``, ``changing`` (echo+cat pairs
    on ``ioasids.max``) and ``reads`` (open+read+close of ``ioasids.current``), interleaved
    (``interleaved``, alternating which face starts), and for ``mkdir`` and ``rmdir`` of
    ``mkdirs`` cgroups (faces in alternating order): ``<name>_v1``, ``<name>_v2`` (rates),
    ``<name>_rate`` (v2 over v1), ``<name>_cpu_v1``, ``<name>_cpu_v2`` (the server's CPU
    seconds per operation) and ``<name>_cpu`` (v1's over v2's)."""
    servers = {}
    for face in (v1, v2):
        (face / "bench").mkdir()
        (face / "m").mkdir()
        for name in ("ioasids.max", "ioasids.current"):
            servers[face / "bench" / name] = SERVERS[face]
        pairs_for(face / "bench" / "ioasids.max", 0.2)
        reads_for(face / "bench" / "ioasids.current", 0.2)
    out: dict[str, list[float]] = {}

    def note(name: str, rates: tuple[float, float], cpu: tuple[float, float]) -> None:
        for key, value in ((f"{name}_v1", rates[0]), (f"{name}_v2", rates[1]),
                           (f"{name}_rate", rates[1] / rates[0]),
                           (f"{name}_cpu_v1", cpu[0]), (f"{name}_cpu_v2", cpu[1]),
                           (f"{name}_cpu", cpu[0] / cpu[1])):
            out.setdefault(key, []).append(value)

    loops = {
        "same": (lambda path, t: pairs_for(path, t), "ioasids.max"),
        "changing": (lambda path, t: pairs_for(path, t, CHANGING), "ioasids.max"),
        "reads": (lambda path, t: reads_for(path, t), "ioasids.current"),
    }
    for r in range(rounds):
        for name, (loop, file) in loops.items():
            meter = Metered(loop, servers)
            paths = (v1 / "bench" / file, v2 / "bench" / file)
            rates = interleaved(meter, *paths, seconds, first=r % 2)
            note(name, rates, (meter.cpu_per_op(paths[0]), meter.cpu_per_op(paths[1])))
        steps = {face: mkdir_rmdir_metered(face / "m", mkdirs, SERVERS[face])
                 for face in ((v1, v2) if r % 2 == 0 else (v2, v1))}
        for step in ("mkdir", "rmdir"):
            note(step, (steps[v1][step][0], steps[v2][step][0]),
                 (steps[v1][step][1], steps[v2][step][1]))
    for face in (v1, v2):
        (face / "bench").rmdir()
        (face / "m").rmdir()
    return out


def print_faces(figures: dict[str, list[float]]) -> None:
    med = {key: statistics.median(values) for key, values in figures.items()}
    rounds = len(figures["same_rate"])
    for name, what in (("same", "echo+cat pairs/s, same value"),
                       ("changing", "echo+cat pairs/s, changing value"),
                       ("reads", "open+read+close/s of an unchanged ioasids.current"),
                       ("mkdir", "mkdir/s"), ("rmdir", "rmdir/s")):
        each = ", ".join(f"{x:.2f}" for x in figures[f"{name}_rate"])
        each_cpu = ", ".join(f"{x:.2f}" for x in figures[f"{name}_cpu"])
        print(f"v2 face: {what}: v1 {med[f'{name}_v1']:,.0f}, v2 {med[f'{name}_v2']:,.0f}, "
              f"v2 / v1 {med[f'{name}_rate']:.3f} ({each}); server CPU per operation: v1 "
              f"{med[f'{name}_cpu_v1'] * 1e6:.1f} us, v2 {med[f'{name}_cpu_v2'] * 1e6:.1f} us, "
              f"v1 / v2 {med[f'{name}_cpu']:.3f} ({each_cpu}) (medians of {rounds} rounds; "
              f"target >= 0.9)")


def mkdir_rmdir(parent: Path, count: int) -> tuple[float, float]:
    """Seconds to create ``count`` directories under ``parent``, and to remove them."""
    names = [os.fsencode(parent / f"c{i}") for i in range(count)]
    start = time.perf_counter()
    for name in names:
        os.mkdir(name)
    made = time.perf_counter() - start
    start = time.perf_counter()
    for name in names:
        os.rmdir(name)
    return made, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--mkdirs", type=int, default=10_000)
    parser.add_argument("--against", metavar="TREE",
                        help="also serve another version's file system (its source tree, put "
                             "on PYTHONPATH) and run its echo+cat loop in the same rounds")
    parser.add_argument("--scale", nargs=2, type=int, metavar=("PARENTS", "CHILDREN"),
                        help="only the scale steps: PARENTS cgroups of CHILDREN each")
    parser.add_argument("--v2", action="store_true",
                        help="also measure our cgroup-v2 face, in the same rounds as the v1 face")
    args = parser.parse_args()
    if os.geteuid() != 0 or not (KERNEL_PIDS / "release_agent").exists():
        raise SystemExit(f"needs root and a kernel cgroup-v1 pids hierarchy at {KERNEL_PIDS}")

    work = Path(tempfile.mkdtemp(prefix="ioasids-bench-"))
    if args.scale:
        try:
            with kernel_cgroup() as kernel, served(work / "mnt") as ours:
                bench_scale(ours, kernel, *args.scale)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        with contextlib.ExitStack() as stack:
            kernel = stack.enter_context(kernel_cgroup())
            ours = stack.enter_context(served(work / "mnt"))
            other = v2 = None
            if args.against:
                other = stack.enter_context(served(work / "other", tree=args.against))
            if args.v2:
                v2 = stack.enter_context(served(work / "v2", v2=True))
            binary = build_reference(work)
            reference = stack.enter_context(reference_served(binary, work / "reference"))
            print_reference(bench_reference(ours, reference, kernel, args.rounds, args.seconds,
                                            other), "no store")
            pairs = bench_pairs(ours, kernel, args.rounds, args.seconds, other)
            print(f"echo+cat pairs/s: ours {pairs['ours']:,.0f}, kernel {pairs['kernel']:,.0f}, "
                  f"ratio {pairs['ratio']:.3f} = 1/{1 / pairs['ratio']:.1f} "
                  f"(median of {args.rounds} rounds of {args.seconds:g} s; target >= 1/15)")
            if other is not None:
                print(f"echo+cat pairs/s of {args.against}: {pairs['other']:,.0f}, ratio "
                      f"{pairs['other_ratio']:.3f} = 1/{1 / pairs['other_ratio']:.1f}; "
                      f"this tree / {args.against}, same rounds: {pairs['vs_other']:.3f}")
            (ours / "m").mkdir()
            ours_mk, ours_rm = mkdir_rmdir(ours / "m", args.mkdirs)
            kernel_mk, kernel_rm = mkdir_rmdir(kernel, args.mkdirs)
            print(f"mkdir x{args.mkdirs}, on_change a no-op: ours {ours_mk:.2f} s, kernel "
                  f"{kernel_mk:.2f} s (ratio {ours_mk / kernel_mk:.1f}); rmdir: ours "
                  f"{ours_rm:.2f} s, kernel {kernel_rm:.2f} s (target: mkdir < 10 s)")
            if v2 is not None:
                (ours / "m").rmdir()
                print_faces(bench_faces(ours, v2, args.rounds, args.seconds, args.mkdirs))
        if have_store():
            state = work / "state"
            state.mkdir()
            with contextlib.ExitStack() as stack:
                kernel = stack.enter_context(kernel_cgroup())
                ours = stack.enter_context(served(work / "mnt", str(state)))
                other = None
                if args.against:
                    other_state = work / "other-state"
                    other_state.mkdir()
                    other = stack.enter_context(served(work / "other", str(other_state),
                                                       tree=args.against))
                reference = stack.enter_context(reference_served(build_reference(work),
                                                                 work / "reference"))
                print_reference(bench_reference(ours, reference, kernel, args.rounds,
                                                args.seconds, other), "daemon store")
                pairs = bench_pairs(ours, kernel, args.rounds, args.seconds)
                print(f"echo+cat pairs/s with the daemon's store: ours {pairs['ours']:,.0f}, "
                      f"kernel {pairs['kernel']:,.0f}, ratio {pairs['ratio']:.3f} = "
                      f"1/{1 / pairs['ratio']:.1f} (target >= 1/15)")
                (ours / "m").mkdir()
                ours_mk, ours_rm = mkdir_rmdir(ours / "m", args.mkdirs)
                kernel_mk, _ = mkdir_rmdir(kernel, args.mkdirs)
                print(f"mkdir x{args.mkdirs}, daemon store (SQLite WAL, synchronous=normal): "
                      f"ours {ours_mk:.2f} s, kernel {kernel_mk:.2f} s (ratio "
                      f"{ours_mk / kernel_mk:.1f}); rmdir: ours {ours_rm:.2f} s")
        else:
            print("mkdir with the daemon's store: not measured (ioasidsd.store.state is not "
                  "importable in this tree)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
