"""Benchmark of batch fairness on the /dev/ioasid socket: how long a small request waits while
another client runs big batches.

Run: ``.venv/bin/python bench/bench_fairness.py [--seconds S] [--rounds R] [--store]
[--against TREE]``.

Two client processes on one server (the model and the socket, profile ``fixed``; with
``--store`` every change also made durable through the daemon's store, as ``ioasidsd run``
does): the *batch* client allocates 65,536 IDs with one ``IOASID_REQUEST_ALLOC_BATCH`` and frees
them with one ``IOASID_REQUEST_FREE_BATCH``, over and over; the *small* client meanwhile makes
``IOASID_REQUEST_ALLOC`` and ``IOASID_REQUEST_FREE`` round trips for ``S`` seconds and times each
one. Printed for each round: the small requests' latency percentiles (p50, p99, max, in
milliseconds), the same alone on the server (no batches: the floor), and the batch client's IDs
per second (what serving batches in slices costs them).

With ``--against TREE`` (another checkout of this project, for example ``git worktree add
/tmp/old <commit>``) the servers of both versions run in worker processes of their own
(``bench/against.py``, ``bench_userapi.py``'s servers), measured in the same rounds by the same
clients, one version right after the other; the table gives each figure's median per version
and the median over rounds of the ratio new/old within a round.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import statistics
import struct
import tempfile
import time

import against
import bench_userapi as userapi
import structlog

uapi = against.uapi_module()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def small_client(path: str, seconds: float, ready, go, results) -> None:
    """ALLOC + FREE round trips for ``seconds``; puts each request's latency (seconds)."""
    sock = userapi._connect(path, greeting=True)
    ready.put(os.getpid())
    go.wait()
    latencies: list[float] = []
    clock = time.perf_counter
    deadline = clock() + seconds
    while clock() < deadline:
        a = clock()
        sock.sendall(userapi.ALLOC_FRAME)
        ret, _ = userapi.REPLY.unpack(userapi._recv_exact(sock, 8))
        b = clock()
        assert ret >= 0, ret
        sock.sendall(userapi.FREE_HEADER + struct.pack("=i", ret))
        ret, _ = userapi.REPLY.unpack(userapi._recv_exact(sock, 8))
        assert ret == 0, ret
        latencies += (b - a, clock() - b)
    results.put(("small", latencies))
    sock.close()


def batch_client(path: str, stop, ready, go, results) -> None:
    """``BATCH`` IDs allocated and freed in one request each, until ``stop``; puts the IDs per
    second."""
    sock = userapi._connect(path, greeting=True)
    ready.put(os.getpid())
    go.wait()
    ids = 0
    start = time.perf_counter()
    while not stop.is_set() or ids == 0:
        sock.sendall(userapi.BATCH_FRAME)
        ret, length = userapi.REPLY.unpack(userapi._recv_exact(sock, 8))
        assert ret == userapi.BATCH, ret
        out = userapi._recv_exact(sock, length)
        sock.sendall(userapi.FREE_BATCH_HEADER + out)
        ret, _ = userapi.REPLY.unpack(userapi._recv_exact(sock, 8))
        assert ret == userapi.BATCH, ret
        ids += 2 * userapi.BATCH
    results.put(("batch", ids / (time.perf_counter() - start)))
    sock.close()


def measure(ctx, path: str, seconds: float, *, batches: bool) -> dict[str, float]:
    """The small client's latency percentiles (ms) on the server at ``path``, with the batch
    client running beside it when ``batches``, and that client's IDs/s."""
    ready, results, go, stop = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [ctx.Process(target=small_client, args=(path, seconds, ready, go, results))]
    if batches:
        procs.append(ctx.Process(target=batch_client, args=(path, stop, ready, go, results)))
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    go.set()
    out = dict([results.get(timeout=seconds * 10 + 120)])
    stop.set()
    if batches:
        out.update([results.get(timeout=120)])
    for p in procs:
        p.join()
    lat = out["small"]
    figures = {"p50 ms": 1000 * statistics.median(lat), "p99 ms": 1000 * _percentile(lat, 0.99),
               "max ms": 1000 * max(lat)}
    if batches:
        figures["batch IDs/s"] = out["batch"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--store", action="store_true",
                        help="servers whose changes go through the daemon's store")
    parser.add_argument("--against", metavar="TREE",
                        help="also measure the server of another version (a checkout of this "
                             "project) beside this one's, and report new/old ratios")
    parser.add_argument(against.WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.against_worker:
        against.serve({"start": userapi.worker_start, "stop": userapi.worker_stop})
        return
    ctx = mp.get_context("spawn")
    kind = "ioasid+store" if args.store else "ioasid"
    comparison = against.Comparison(against.check_tree(args.against)) if args.against else None
    workers: dict[str, against.Worker] = {}
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, str] = {}
        server = None
        try:
            if comparison is not None:
                for side, tree in (("new", against.ROOT), ("old", comparison.tree)):
                    workers[side] = against.Worker(__file__, tree)
                    comparison.origins[side] = workers[side].origin["ioasidsd"]
                    where = os.path.join(tmp, side)
                    os.makedirs(where)
                    paths[side] = workers[side].call("start", kind, where)
            else:
                server = userapi.make_server(kind, tmp)
                paths["new"] = server[1].path
            for r in range(args.rounds):
                for side in against.in_turn(r):
                    if side not in paths:
                        continue
                    for batches in (False, True):
                        figures = measure(ctx, paths[side], args.seconds, batches=batches)
                        label = "with batches" if batches else "alone"
                        rows.append((f"round {r} {side} {label}", figures))
                        if comparison is not None:
                            for name, value in figures.items():
                                comparison.add(side, f"{kind} small request {label}, {name}"
                                               if name != "batch IDs/s" else
                                               f"{kind} batch client IDs/s", value)
            for worker in workers.values():
                worker.call("stop")
        finally:
            for worker in workers.values():
                worker.close()
            if server is not None:
                userapi.stop_server(*server)
    print(f"server: {kind}; small client: ALLOC/FREE round trips; batch client: "
          f"{userapi.BATCH}-ID ALLOC_BATCH + FREE_BATCH")
    for label, figures in rows:
        print(f"{label:<32} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()))
    if comparison is not None:
        comparison.print()


if __name__ == "__main__":
    main()
