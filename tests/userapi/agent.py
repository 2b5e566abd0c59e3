"""A real client process for the tests: ``python agent.py RUNTIME_DIR``.

It reads one command per line on stdin and answers one line on stdout: ``ok VALUE...`` or
``err ERRNO MESSAGE``. Commands: ``open``, ``close``, ``version``, ``info``, ``alloc LO HI``,
``free ID``, ``batch N LO HI``, ``freebatch ID...``, ``bind HPASID BDF GPASID|-``,
``unbind HPASID BDF``, ``child CMD...`` (fork; the child runs CMD on the inherited connection
and answers, the parent waits for it), ``pid``.
"""

from __future__ import annotations

import os
import sys

from ioasidsd.userapi.client import IoasidClient

Answer = tuple[IoasidClient | None, str]


def run(dev: IoasidClient | None, words: list[str], runtime: str) -> Answer:
    cmd, args = words[0], [int(w, 0) if w.lstrip("-").isdigit() else w for w in words[1:]]
    if cmd == "open":
        return IoasidClient.open(runtime), "ok"
    if cmd == "pid":
        return dev, f"ok {os.getpid()}"
    assert dev is not None, "not open"
    if cmd == "close":
        dev.close()
        return None, "ok"
    if cmd == "version":
        return dev, f"ok {dev.get_api_version()}"
    if cmd == "info":
        return dev, f"ok {dev.get_info()}"
    if cmd == "alloc":
        return dev, f"ok {dev.alloc(*args)}"
    if cmd == "free":
        dev.free(args[0])
        return dev, "ok"
    if cmd == "batch":
        return dev, "ok " + " ".join(map(str, dev.alloc_batch(*args)))
    if cmd == "freebatch":
        return dev, f"ok {dev.free_batch(args)}"
    if cmd == "bind":
        gpasid = None if args[2] == "-" else args[2]
        dev.bind(args[0], str(args[1]), gpasid)
        return dev, "ok"
    if cmd == "unbind":
        dev.unbind(args[0], str(args[1]))
        return dev, "ok"
    if cmd == "child":
        sys.stdout.flush()
        child = os.fork()
        if child == 0:
            try:
                _, line = run(dev, words[1:], runtime)
            except OSError as exc:
                line = f"err {exc.errno} {exc.strerror}"
            os.write(1, (line + "\n").encode())
            os._exit(0)
        os.waitpid(child, 0)
        return dev, ""
    raise ValueError(f"unknown command {cmd}")


def main() -> None:
    runtime = sys.argv[1]
    dev: IoasidClient | None = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        try:
            dev, answer = run(dev, words, runtime)
        except OSError as exc:
            answer = f"err {exc.errno} {exc.strerror}"
        if answer:
            sys.stdout.write(answer + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
