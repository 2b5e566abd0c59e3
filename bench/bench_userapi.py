"""Benchmark of the /dev/ioasid socket against a trivial echo server on the same kind of socket.

Run: ``.venv/bin/python bench/bench_userapi.py [--seconds S] [--rounds R] [--store] [--busy]
[--against TREE]``.

Each rate is also given per CPU-second: the work done over the CPU time the clients and the
server process spent on it together, which the machine's other load disturbs far less than
the wall clock. ``--busy`` keeps one core busy with a process of its own during the run.

Both servers run in this process on unix stream sockets with one thread per connection; the
clients are separate processes (spawned before either server starts) with the same minimal
loop: send a frame, read the reply. Each measurement alternates echo and ioasid runs ``rounds``
times and reports medians, so the ratio compares runs made side by side on the same machine.

* round trips: each client alternates ``IOASID_REQUEST_ALLOC`` and ``IOASID_REQUEST_FREE``
  (24 and 12 byte frames); the echo client sends the same frames and reads them back. One client
  and four. Target: one client at least half the echo server's rate.
* batch: one client allocates 65,536 IDs with one ``IOASID_REQUEST_ALLOC_BATCH`` and frees them
  with one ``IOASID_REQUEST_FREE_BATCH``; the echo client echoes frames of the same sizes. Target:
  at least 200,000 IDs/s.

The server side is the model plus the socket. With ``--store`` a second server, measured in the
same rounds, also makes every change durable through the daemon's store as ``ioasidsd run``
does (a journal record per change, folded into SQLite in the background; WAL,
``synchronous=normal``), and its rates are also given as ratios to the first's.

With ``--against TREE`` (another checkout of this project, for example ``git worktree add
/tmp/old <commit>``) the same server is also run from both versions, each in a worker process of
its own (``bench/against.py``): one importing this tree ("new"), one importing TREE ("old"),
both with ``--store``'s server too when it is given. They are measured in the same rounds as the
others, by the same clients (this tree's), one version right after the other (which goes first
alternates between rounds). Printed after the usual figures: for each figure, the median of
each version and the median over rounds of the ratio new/old within a round. One figure is
measured in the workers only, two figures: ALLOC+FREE pairs, and batch IDs (ALLOC_BATCH +
FREE_BATCH), through ``System.ioasid_ioctl`` without the socket, per second of the worker's
CPU time (with the store, the folds of the records made included), which a busy machine
disturbs far less than the wall-clock rates of the socket.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import socket
import statistics
import struct
import tempfile
import threading
import time
from typing import TYPE_CHECKING

import against
import structlog

from ioasidsd.model import profile
from ioasidsd.system import System
from ioasidsd.userapi import protocol
from ioasidsd.userapi.server import UserApiServer

uapi = against.uapi_module()

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    Store = against.store_class()

BATCH = uapi.IOASID_BATCH_MAX


# ---------------------------------------------------------------------------------- servers
class EchoServer:
    """The reference: echo every byte back, one thread per connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def stop(self) -> None:
        self.sock.close()
        os.unlink(self.path)


# ---------------------------------------------------------------------------------- clients
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if not k:
            raise ConnectionResetError
        got += k
    return bytes(buf)


ALLOC_FRAME = protocol.request(uapi.IOASID_REQUEST_ALLOC,
                               uapi.ALLOC_REQUEST.pack(16, 0, 1, (1 << 31) - 1))
FREE_HEADER = protocol.REQUEST.pack(uapi.IOASID_REQUEST_FREE, 4)
BATCH_FRAME = protocol.request(uapi.IOASID_REQUEST_ALLOC_BATCH,
                               uapi.ALLOC_BATCH.pack(20, 0, 1, (1 << 31) - 1, BATCH))
FREE_BATCH_HEADER = protocol.REQUEST.pack(uapi.IOASID_REQUEST_FREE_BATCH, 12 + 4 * BATCH) + \
    uapi.FREE_BATCH.pack(12 + 4 * BATCH, 0, BATCH)
REPLY = struct.Struct("=iI")


def _connect(path: str, greeting: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    if greeting:
        ret, _ = REPLY.unpack(_recv_exact(sock, 8))
        assert ret == 0, f"open failed: {ret}"
    return sock


def round_trip_client(path: str, echo: bool, seconds: float, ready, go, results) -> None:
    sock = _connect(path, greeting=not echo)
    ready.put(os.getpid())
    go.wait()
    n = 0
    free_frame = FREE_HEADER + b"\0\0\0\0"
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        sock.sendall(ALLOC_FRAME)
        if echo:
            _recv_exact(sock, len(ALLOC_FRAME))
            sock.sendall(free_frame)
            _recv_exact(sock, len(free_frame))
        else:
            ret, _ = REPLY.unpack(_recv_exact(sock, 8))
            assert ret >= 0, ret
            sock.sendall(FREE_HEADER + struct.pack("=i", ret))
            ret, _ = REPLY.unpack(_recv_exact(sock, 8))
            assert ret == 0, ret
        n += 2
        if n % 64 == 0 and time.perf_counter() >= deadline:
            break
    results.put((n, time.perf_counter() - t0, time.process_time() - cpu0))
    sock.close()


def batch_client(path: str, echo: bool, seconds: float, ready, go, results) -> None:
    sock = _connect(path, greeting=not echo)
    ready.put(os.getpid())
    go.wait()
    ids = b"\0" * (4 * BATCH)
    t_alloc = t_free = 0.0
    cycles = 0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline or cycles == 0:
        a = time.perf_counter()
        sock.sendall(BATCH_FRAME)
        if echo:
            _recv_exact(sock, len(BATCH_FRAME))
            sock.sendall(protocol.REPLY.pack(BATCH, len(ids)) + ids)  # the reply's size, back
            _recv_exact(sock, 8 + len(ids))
        else:
            ret, length = REPLY.unpack(_recv_exact(sock, 8))
            assert ret == BATCH, ret
            ids = _recv_exact(sock, length)
        b = time.perf_counter()
        sock.sendall(FREE_BATCH_HEADER + ids)
        if echo:
            _recv_exact(sock, len(FREE_BATCH_HEADER) + len(ids))
        else:
            ret, _ = REPLY.unpack(_recv_exact(sock, 8))
            assert ret == BATCH, ret
        c = time.perf_counter()
        t_alloc += b - a
        t_free += c - b
        cycles += 1
    results.put((cycles * BATCH, t_alloc, t_free, time.process_time() - cpu0))
    sock.close()


# ---------------------------------------------------------------------------------- driver
def run_clients(ctx, target, path: str, echo: bool, clients: int,
                seconds: float) -> tuple[list, float]:
    """Run ``clients`` clients together; their results, and the CPU time this process (the
    servers) spent meanwhile."""
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(path, echo, seconds, ready, go, results))
             for _ in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    cpu0 = time.process_time()  # this process: the servers' threads (the main one waits)
    go.set()
    out = [results.get(timeout=seconds * 10 + 60) for _ in procs]
    server_cpu = time.process_time() - cpu0
    for p in procs:
        p.join()
    return out, server_cpu


def spin() -> None:
    """Keep one core busy (``--busy``)."""
    while True:
        pass


def make_system(kind: str, tmp: str) -> tuple[System, Store | None]:
    """The system behind a server of ``kind`` (see ``make_server``), its store in
    ``tmp/state`` for ``"ioasid+store"``."""
    if kind != "ioasid+store":
        return System(profile("fixed")), None
    store = against.store_class().open(os.path.join(tmp, "state"))
    system = System(profile("fixed"), on_change=store.apply)
    store.bind(system)
    return system, store


def make_server(kind: str, tmp: str) -> tuple[System, UserApiServer, Store | None]:
    """A started server of ``kind``: ``"ioasid"`` (the model and the socket, profile ``fixed``)
    or ``"ioasid+store"`` (the same, every change made durable by the daemon's store in
    ``tmp/state``); its runtime directory is ``tmp/kind``, which must not exist yet."""
    runtime = os.path.join(tmp, kind)
    os.mkdir(runtime)
    system, store = make_system(kind, tmp)
    server = UserApiServer(system, runtime)
    server.start()
    return system, server, store


def request_pairs(kind: str, tmp: str, pairs: int) -> float:
    """In an ``--against`` worker: ALLOC+FREE pairs per second of this process's CPU time
    through ``System.ioasid_ioctl`` (what a request costs the server without its socket),
    best of three runs; with the store, each run ends with a fold of its records, whose CPU
    (the folding thread's) is counted. CPU time, not wall time: what other processes on a
    busy machine take is not counted."""
    system, store = make_system(kind, tmp)
    file = system.ioasid_open(os.getpid())
    alloc_cmd = protocol.REQUEST.unpack_from(ALLOC_FRAME)[0]
    alloc_arg = ALLOC_FRAME[protocol.REQUEST.size:]
    free_cmd = uapi.IOASID_REQUEST_FREE
    ioctl = system.ioasid_ioctl
    pack = struct.Struct("=i").pack
    best = 0.0
    for _ in range(3):
        start = time.process_time()
        for _ in range(pairs):
            ioasid, _out = ioctl(file, alloc_cmd, alloc_arg)
            ioctl(file, free_cmd, pack(ioasid))
        if store is not None:  # its folding thread's CPU is the server's too
            assert store.fold(), store.error
        best = max(best, pairs / (time.process_time() - start))
    system.ioasid_release(file)
    if store is not None:
        assert store.error is None, store.error
        store.close()
    assert len(system.core) == 0, "every ID was freed"
    return best


def stop_server(system: System, server: UserApiServer, store: Store | None) -> None:
    """Stop a server of ``make_server``, checking that every ID was freed and the store did
    not fail."""
    server.stop()
    assert len(system.core) == 0, "every ID was freed"
    if store is not None:
        assert store.error is None, store.error
        store.close()


def measure_round_trips(ctx: BaseContext, path: str, echo: bool, clients: int,
                        seconds: float) -> tuple[float, float]:
    """Round trips per second of ``clients`` clients together on the server at ``path``, and
    per CPU-second (the clients' and the server's CPU time together: what a busy machine's
    other work takes is not counted)."""
    res, server_cpu = run_clients(ctx, round_trip_client, path, echo, clients, seconds)
    return (sum(n / t for n, t, _ in res),
            sum(n for n, _, _ in res) / (server_cpu + sum(c for _, _, c in res)))


def measure_batch(ctx: BaseContext, path: str, echo: bool, seconds: float) -> dict[str, float]:
    """One client's batch IDs/s on the server at ``path``: alloc+free, alloc, free; and
    alloc+free per CPU-second (the client's and the server's)."""
    ((ids, t_alloc, t_free, cpu),), server_cpu = run_clients(ctx, batch_client, path, echo, 1,
                                                             seconds)
    return {"alloc+free": ids / (t_alloc + t_free), "alloc": ids / t_alloc,
            "free": ids / t_free, "alloc+free per CPU-second": ids / (cpu + server_cpu)}


# ---------------------------------------------------------------------------------- --against
_worker_servers: dict[str, tuple[System, UserApiServer, Store | None]] = {}


def batch_ids(kind: str, tmp: str, cycles: int) -> float:
    """In an ``--against`` worker: IDs allocated and freed per second of this process's CPU
    time by ``ALLOC_BATCH`` + ``FREE_BATCH`` of ``BATCH`` IDs through ``System.ioasid_ioctl``
    (no socket), best of three runs of ``cycles`` cycles, each ending with a fold of the
    store's records (counted, as in ``request_pairs``)."""
    system, store = make_system(kind, tmp)
    file = system.ioasid_open(os.getpid())
    batch_arg = BATCH_FRAME[protocol.REQUEST.size:]
    ioctl = system.ioasid_ioctl
    best = 0.0
    for _ in range(3):
        start = time.process_time()
        for _ in range(cycles):
            count, ids = ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch_arg)
            free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(ids), 0, count) + ids
            ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)
        if store is not None:  # its folding thread's CPU is the server's too
            assert store.fold(), store.error
        best = max(best, 2 * BATCH * cycles / (time.process_time() - start))
    system.ioasid_release(file)
    if store is not None:
        assert store.error is None, store.error
        store.close()
    assert len(system.core) == 0, "every ID was freed"
    return best


def worker_start(kind: str, tmp: str) -> str:
    """In an ``--against`` worker: start a server of ``kind`` (``make_server``) in the fresh
    directory ``tmp``; return its socket's path."""
    _worker_servers[kind] = make_server(kind, tmp)
    return _worker_servers[kind][1].path


def worker_stop() -> None:
    """In an ``--against`` worker: stop its servers (``stop_server``: every ID freed)."""
    while _worker_servers:
        stop_server(*_worker_servers.popitem()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of echo and ioasid")
    parser.add_argument("--store", action="store_true",
                        help="also measure a server whose changes go through the daemon's store")
    parser.add_argument("--against", metavar="TREE",
                        help="also measure the server of another version (a checkout of this "
                             "project) beside this one's, and report new/old ratios")
    parser.add_argument("--busy", action="store_true",
                        help="keep one core busy with another process during the run")
    parser.add_argument(against.WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.against_worker:
        against.serve({"start": worker_start, "stop": worker_stop,
                       "requests": request_pairs, "batches": batch_ids})
        return
    ctx = mp.get_context("spawn")
    busy = ctx.Process(target=spin, daemon=True) if args.busy else None
    if busy is not None:
        busy.start()
    kinds = ("ioasid", "ioasid+store") if args.store else ("ioasid",)
    comparison = against.Comparison(against.check_tree(args.against)) if args.against else None
    workers: dict[str, against.Worker] = {}
    with tempfile.TemporaryDirectory() as tmp:
        echo = EchoServer(os.path.join(tmp, "echo.sock"))
        servers = [("echo", echo.path, True)]
        systems = []
        for name in kinds:
            system, server, store = make_server(name, tmp)
            servers.append((name, server.path, False))
            systems.append((system, server, store))
        versions: dict[tuple[str, str], str] = {}  # (side, kind) -> the worker server's socket
        try:
            if comparison is not None:
                for side, tree in (("new", against.ROOT), ("old", comparison.tree)):
                    workers[side] = against.Worker(__file__, tree)
                    comparison.origins[side] = workers[side].origin["ioasidsd"]
                    for kind in kinds:
                        where = os.path.join(tmp, side, kind)
                        os.makedirs(where)
                        versions[side, kind] = workers[side].call("start", kind, where)
            rates: dict[str, list[float]] = {}
            for r in range(args.rounds):
                # this round's runs of the two versions, each right after the other
                pairs = [(side, kind) for kind in kinds for side in against.in_turn(r)
                         if (side, kind) in versions]
                for clients in (1, 4):
                    for name, path, is_echo in servers:
                        wall, cpu = measure_round_trips(ctx, path, is_echo, clients,
                                                        args.seconds)
                        rates.setdefault(f"{name} x{clients} round trips/s", []).append(wall)
                        rates.setdefault(f"{name} x{clients} round trips per CPU-second",
                                         []).append(cpu)
                    for side, kind in pairs:
                        assert comparison is not None
                        comparison.add(side, f"{kind} x{clients} round trips/s",
                                       measure_round_trips(ctx, versions[side, kind], False,
                                                           clients, args.seconds)[0])
                for name, path, is_echo in servers:
                    for what, rate in measure_batch(ctx, path, is_echo, args.seconds).items():
                        rates.setdefault(f"{name} batch IDs/s ({what})", []).append(rate)
                for side, kind in pairs:
                    assert comparison is not None
                    batch = measure_batch(ctx, versions[side, kind], False, args.seconds)
                    for what, rate in batch.items():
                        if "CPU" not in what:  # by CPU time: the in-process figures below
                            comparison.add(side, f"{kind} batch IDs/s ({what})", rate)
                for side, kind in pairs:
                    assert comparison is not None
                    where = os.path.join(tmp, side, f"{kind}-requests-{r}")
                    os.makedirs(where)
                    comparison.add(side, f"{kind} in-process pairs per CPU-second",
                                   workers[side].call("requests", kind, where,
                                                      max(500, int(20_000 * args.seconds))))
                    comparison.add(side, f"{kind} in-process batch IDs per CPU-second",
                                   workers[side].call("batches", kind, where + "b",
                                                      2 if args.seconds >= 0.5 else 1))
            for worker in workers.values():
                worker.call("stop")
        finally:
            for worker in workers.values():
                worker.close()
        for system, server, store in systems:
            stop_server(system, server, store)
        echo.stop()
    print("servers: model + socket" + (" (ioasid), and the same + the daemon's store "
                                       "(ioasid+store)" if args.store else ""))
    med = {k: statistics.median(v) for k, v in rates.items()}
    width = max(map(len, med))
    for key, value in med.items():
        runs = ", ".join(f"{v:,.0f}" for v in rates[key])
        print(f"{key:<{width}}  {value:>14,.0f}   (runs: {runs})")

    def ratio(mine: str, ref: str) -> float:
        """The median over rounds of the ratio of two runs made side by side."""
        return against.median_ratio(rates[mine], rates[ref])

    for name, _, is_echo in servers:
        if is_echo:
            continue
        single = ratio(f"{name} x1 round trips/s", "echo x1 round trips/s")
        four = ratio(f"{name} x4 round trips/s", "echo x4 round trips/s")
        print(f"ratio {name}/echo round trips, 1 client: {single:.2f}; 4 clients: {four:.2f}")
        single_cpu = ratio(f"{name} x1 round trips per CPU-second",
                           "echo x1 round trips per CPU-second")
        four_cpu = ratio(f"{name} x4 round trips per CPU-second",
                         "echo x4 round trips per CPU-second")
        print(f"ratio {name}/echo round trips per CPU-second, 1 client: {single_cpu:.2f}; "
              f"4 clients: {four_cpu:.2f}")
        for kind in ("alloc+free", "alloc", "free", "alloc+free per CPU-second"):
            r = ratio(f"{name} batch IDs/s ({kind})", f"echo batch IDs/s ({kind})")
            print(f"ratio {name}/echo, batch {kind}: {r:.4f}")
        batch = med[f"{name} batch IDs/s (alloc+free)"]
        # the targets: the model's socket at least half the echo server's rate, and the
        # durable one (with the store) 0.6 on one client and 0.5 on four
        one, many = (0.6, 0.5) if name == "ioasid+store" else (0.5, None)
        print(f"targets, {name}: 1-client ratio {single:.2f} >= {one}: "
              f"{'met' if single >= one else 'MISSED'}; "
              + ("" if many is None else f"4-client ratio {four:.2f} >= {many}: "
                                         f"{'met' if four >= many else 'MISSED'}; ")
              + f"batch {batch:,.0f} IDs/s >= 200,000: "
              f"{'met' if batch >= 200_000 else 'MISSED'}")
    if args.store:
        for key in ("x1 round trips/s", "x4 round trips/s", "batch IDs/s (alloc+free)",
                    "x1 round trips per CPU-second", "x4 round trips per CPU-second",
                    "batch IDs/s (alloc+free per CPU-second)"):
            print(f"ratio ioasid+store/ioasid, {key}: "
                  f"{ratio(f'ioasid+store {key}', f'ioasid {key}'):.2f}")
        durable = ratio("ioasid+store batch IDs/s (alloc+free)", "ioasid batch IDs/s (alloc+free)")
        print(f"target, batch alloc+free IDs/s with the store / without: {durable:.2f} >= 0.9: "
              f"{'met' if durable >= 0.9 else 'MISSED'}")
    if comparison is not None:
        comparison.print()
    if busy is not None:
        busy.kill()

if __name__ == "__main__":
    main()
