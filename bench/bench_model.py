"""Benchmark of the model (issue 2): alloc+free pairs per second, and memory for 2^20 IOASIDs.

Throughput: a process in a cgroup at depth 4 (``/a/b/c/d``, each level with a limit) allocates and
frees one IOASID of its MM set in a loop, with a FREE listener on the global chain, in the
``fixed`` profile. The reference is a bare loop of the same shape without the model: the same
number of Python calls into plain functions that take the same lock, look up and update dicts and
walk four counters, so the ratio shows what the model's logic costs over that skeleton. Both loops
run alternately in the same process, several rounds, best round of each.

Memory: a child process allocates 2^20 live IOASIDs through the same path and reports its resident
set size (RSS) against an identical child that imports the model and allocates nothing.

Targets: >= 300,000 pairs/s; <= 200 MB for 2^20 live IOASIDs.

Usage: ``.venv/bin/python bench/bench_model.py [--pairs N] [--rounds R] [--json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

from ioasidsd.model import IoasidCore, IoasidSetType, NotifierBlock, profile
from ioasidsd.model.ioasids import IoasidsController

LIVE_IDS = 1 << 20
TARGET_PAIRS = 300_000
TARGET_MB = 200


def build_model(limit: int | None = LIVE_IDS // 4) -> tuple[IoasidCore, object, object]:
    """A fixed-profile model with a depth-4 cgroup path, a FREE listener and one MM set.

    Every level gets ``limit`` (``None``: ``max``). In the fixed profile each numeric limit
    reserves itself from the pool, so four levels of 2^18 use the whole 2^20 capacity.
    """
    core = IoasidCore(profile("fixed"))
    controller = IoasidsController(core)
    cgroups = controller.hierarchy
    node = cgroups.root
    for name in ("a", "b", "c", "d"):
        node = cgroups.mkdir(node, name)
        controller.set_max(node, limit)
    core.register_notifier(None, NotifierBlock(lambda nb, event, args: 0, name="free-listener"))
    task = cgroups.track(4242, 1.0, node)
    ioasid_set = core.set_alloc(task.mm, 0, IoasidSetType.MM)
    return core, ioasid_set, task


def model_loop(pairs: int) -> float:
    core, ioasid_set, task = build_model()
    alloc, free = core.alloc, core.free
    start = time.perf_counter()
    for _ in range(pairs):
        ioasid = alloc(ioasid_set, 1, 0xFFFFF, None, task=task)
        free(ioasid_set, ioasid, task=task)
    return pairs / (time.perf_counter() - start)


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
    """Run in a child: allocate ``live`` IOASIDs (0 = none) and print the RSS in bytes."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child is not None:
        print(rss_child(args.rss_child))
        return 0

    model_rates, ref_rates = [], []
    for _ in range(args.rounds):
        ref_rates.append(reference_loop(args.pairs))
        model_rates.append(model_loop(args.pairs))
    model_rate, ref_rate = max(model_rates), max(ref_rates)

    base_rss = measure_rss(0)
    full_rss = measure_rss(LIVE_IDS)
    held_mb = (full_rss - base_rss) / 2**20
    result = {
        "model_pairs_per_s": round(model_rate),
        "reference_pairs_per_s": round(ref_rate),
        "ratio_model_to_reference": round(model_rate / ref_rate, 3),
        "target_pairs_per_s": TARGET_PAIRS,
        "rss_empty_mb": round(base_rss / 2**20, 1),
        "rss_with_2^20_ids_mb": round(full_rss / 2**20, 1),
        "held_by_2^20_ids_mb": round(held_mb, 1),
        "target_mb": TARGET_MB,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    ok = model_rate >= TARGET_PAIRS and full_rss / 2**20 <= TARGET_MB
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
