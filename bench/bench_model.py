"""Benchmark of the model: alloc+free pairs per second, and memory for 2^20 IOASIDs.

Throughput: a process in a cgroup at depth 4 (``/a/b/c/d``, each level with a limit) allocates and
frees one IOASID of its MM set in a loop, with a FREE listener on the global chain, in the
``fixed`` profile. The reference is a bare loop of the same shape without the model: the same
number of Python calls into plain functions that take the same lock, look up and update dicts and
walk four counters, so the ratio shows what the model's logic costs over that skeleton. Both loops
run alternately in the same process, several rounds, best round of each.

Memory: a child process allocates 2^20 live IOASIDs through the same path and reports its resident
set size (RSS) against an identical child that imports the model and allocates nothing.

Targets: >= 300,000 pairs/s; <= 200 MB for 2^20 live IOASIDs.

With ``--against TREE`` (another checkout of this project, for example ``git worktree add
/tmp/old <commit>``) the same figures are also measured for both versions, each in processes of
its own (``bench/against.py``): in every round a worker importing this tree and one importing
TREE run the alloc+free loop one after the other (which goes first alternates), and then, in as
many rounds again, fresh workers of each report their RSS empty and holding the IOASIDs. What is
printed after the usual figures (or under ``"against"`` with ``--json``) is, for each figure,
the median of each side and the median over rounds of the ratio new/old within a round. The
loop is measured twice per round and side: by elapsed time, and by the worker's CPU time
(``pairs per CPU-second``), which what other processes of a busy machine take leaves alone.

Usage: ``.venv/bin/python bench/bench_model.py [--pairs N] [--rounds R] [--live N] [--json]
[--against TREE]`` (``--live``: how many IOASIDs the memory figure holds, 2^20 by default).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from ioasidsd.model import IoasidCore, IoasidSetType, NotifierBlock, profile

try:
    from ioasidsd.model.ioasids import IoasidsController
except ImportError:  # --against a tree from before the hierarchy had a module of its own
    from ioasidsd.model.cgroup import IoasidsController  # type: ignore[no-redef]

LIVE_IDS = 1 << 20
TARGET_PAIRS = 300_000
TARGET_MB = 200

if TYPE_CHECKING:
    import against  # imported where used: the RSS child (``--rss-child``) must not count it


def build_model(limit: int | None = LIVE_IDS // 4) -> tuple[IoasidCore, object, object]:
    """A fixed-profile model with a depth-4 cgroup path, a FREE listener and one MM set.

    Every level gets ``limit`` (``None``: ``max``). In the fixed profile each numeric limit
    reserves itself from the pool, so four levels of 2^18 use the whole 2^20 capacity.
    """
    core = IoasidCore(profile("fixed"))
    controller = IoasidsController(core)
    cgroups = getattr(controller, "hierarchy", controller)  # one object in older trees
    node = cgroups.root
    for name in ("a", "b", "c", "d"):
        node = cgroups.mkdir(node, name)
        controller.set_max(node, limit)
    core.register_notifier(None, NotifierBlock(lambda nb, event, args: 0, name="free-listener"))
    task = cgroups.track(4242, 1.0, node)
    ioasid_set = core.set_alloc(task.mm, 0, IoasidSetType.MM)
    return core, ioasid_set, task


def model_loop(pairs: int, clock: str = "wall") -> float:
    """Pairs per second of ``clock``: ``"wall"`` (elapsed) or ``"cpu"`` (this process's CPU
    time, which other processes on a busy machine do not add to)."""
    timer = time.process_time if clock == "cpu" else time.perf_counter
    core, ioasid_set, task = build_model()
    alloc, free = core.alloc, core.free
    start = timer()
    for _ in range(pairs):
        ioasid = alloc(ioasid_set, 1, 0xFFFFF, None, task=task)
        free(ioasid_set, ioasid, task=task)
    return pairs / (timer() - start)


class _Node:
    __slots__ = ("counter", "limit", "parent")

    def __init__(self, parent: _Node | None) -> None:
        self.parent = parent
        self.counter = 0
        self.limit = 1 << 20


def reference_loop(pairs: int) -> float:
    """The same shape with no model: lock, dict insert/delete, a four-level counter walk."""
    lock = threading.RLock()
    live: dict[int, object] = {}
    root = _Node(None)
    leaf = root
    for _ in range(4):
        leaf = _Node(leaf)

    def alloc(lo: int, hi: int, private: object = None, *, task: object = None) -> int:
        with lock:
            node = leaf
            while node.parent is not None:
                node.counter += 1
                node = node.parent
            value = lo
            live[value] = private
            return value

    def free(value: int, *, task: object = None) -> None:
        with lock:
            del live[value]
            node = leaf
            while node.parent is not None:
                node.counter -= 1
                node = node.parent

    start = time.perf_counter()
    for _ in range(pairs):
        value = alloc(1, 0xFFFFF, None, task=None)
        free(value, task=None)
    return pairs / (time.perf_counter() - start)


def rss_child(live: int) -> int:
    """Run in a child: allocate ``live`` IOASIDs (0 = none) and return the RSS in bytes."""
    import psutil

    core, ioasid_set, task = build_model(None)  # unlimited: every ID draws from the pool
    held = [core.alloc(ioasid_set, 1, 0xFFFFFFFE, None, task=task) for _ in range(live)]
    assert len(core) == live and len(held) == live
    return psutil.Process().memory_info().rss


def measure_rss(live: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(live)],
        check=True, capture_output=True, text=True,
    ).stdout
    return int(out.strip())


def rss_against(comparison: against.Comparison, side: str, live: int, label: str) -> None:
    """Add the RSS figures of one round for ``side``: fresh workers of that side's tree (one
    empty, one holding ``live`` IOASIDs), as ``rss_child`` measures them."""
    import against

    tree = against.ROOT if side == "new" else comparison.tree
    with against.Worker(__file__, tree) as worker:
        empty = worker.call("rss_child", 0)
    with against.Worker(__file__, tree) as worker:
        full = worker.call("rss_child", live)
    comparison.add(side, "RSS empty (MB)", empty / 2**20)
    comparison.add(side, f"RSS with {label} IOASIDs (MB)", full / 2**20)
    comparison.add(side, f"RSS held by {label} IOASIDs (MB)", (full - empty) / 2**20)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--live", type=int, default=LIVE_IDS,
                        help="live IOASIDs for the memory figure (default 2^20)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--against", metavar="TREE",
                        help="also measure another version (a checkout of this project) beside "
                             "this one, and report new/old ratios")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--against-worker", action="store_true",  # against.WORKER_FLAG
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        print(rss_child(args.rss_child))
        return 0
    import against  # not earlier: the RSS child above would count it

    if args.against_worker:
        against.serve({"model_loop": model_loop, "rss_child": rss_child})
        return 0

    comparison = None
    workers: dict[str, against.Worker] = {}
    if args.against:
        comparison = against.Comparison(against.check_tree(args.against))
    try:
        if comparison is not None:
            for side, tree in (("new", against.ROOT), ("old", comparison.tree)):
                workers[side] = against.Worker(__file__, tree)
                comparison.origins[side] = workers[side].origin["ioasidsd"]
        model_rates, ref_rates = [], []
        for r in range(args.rounds):
            ref_rates.append(reference_loop(args.pairs))
            model_rates.append(model_loop(args.pairs))
            if comparison is not None:
                for side in against.in_turn(r):
                    comparison.add(side, "model alloc+free pairs/s",
                                   workers[side].call("model_loop", args.pairs))
                for side in against.in_turn(r + 1):
                    comparison.add(side, "model alloc+free pairs per CPU-second",
                                   workers[side].call("model_loop", args.pairs, "cpu"))
    finally:
        for worker in workers.values():
            worker.close()
    model_rate, ref_rate = max(model_rates), max(ref_rates)

    label = "2^20" if args.live == LIVE_IDS else f"{args.live:,}"
    base_rss = measure_rss(0)
    full_rss = measure_rss(args.live)
    held_mb = (full_rss - base_rss) / 2**20
    if comparison is not None:
        for r in range(args.rounds):
            for side in against.in_turn(r):
                rss_against(comparison, side, args.live, label)
    key = "2^20" if args.live == LIVE_IDS else str(args.live)
    result = {
        "model_pairs_per_s": round(model_rate),
        "reference_pairs_per_s": round(ref_rate),
        "ratio_model_to_reference": round(model_rate / ref_rate, 3),
        "target_pairs_per_s": TARGET_PAIRS,
        "rss_empty_mb": round(base_rss / 2**20, 1),
        f"rss_with_{key}_ids_mb": round(full_rss / 2**20, 1),
        f"held_by_{key}_ids_mb": round(held_mb, 1),
        "target_mb": TARGET_MB,
    }
    if args.json:
        if comparison is not None:
            result["against"] = comparison.as_dict()
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:28} {value}")
        if comparison is not None:
            comparison.print()
    ok = model_rate >= TARGET_PAIRS and full_rss / 2**20 <= TARGET_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
