"""Benchmark of the preload library (``ioasidctl wrap``): what it costs a program.

Run: ``.venv/bin/python bench/bench_preload.py [--seconds S] [--rounds R] [--verbose]``.

``bench/preload_bench.c`` is compiled against ``preload/include`` and run in two pairs, the two
runs of a pair right after each other (which goes first alternates), ``rounds`` times; each
figure is the median over the rounds of the ratio within a round:

* ioctl round trips: ALLOC+FREE pairs as ``ioctl()`` on ``open("/dev/ioasid")`` under the
  library, against the same pairs framed by hand over the raw socket as the C client of
  ``tests/userapi/c_client.c`` does. Both talk to one ``/dev/ioasid`` server (the model and the
  socket, as in ``bench_userapi.py``) in this process. Target: at least 0.9.
* ordinary files: ``open``/``read``/``close`` and ``fopen``/``fread``/``fclose`` of 16 small
  files under the library, against the same program without it, per second of the program's
  CPU time (user and system). Target: at least 0.95.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ioasidsd.cli.wrap import library_path
from ioasidsd.model import profile
from ioasidsd.system import System
from ioasidsd.userapi.server import UserApiServer

ROOT = Path(__file__).resolve().parents[1]


def build(out: Path) -> Path:
    exe = out / "preload_bench"
    subprocess.run(["gcc", "-O2", f"-I{ROOT / 'preload' / 'include'}",
                    f"-I{ROOT / 'tests' / 'userapi'}", "-o", str(exe),
                    str(ROOT / "bench" / "preload_bench.c")], check=True)
    return exe


def rate(argv: list[str], env: dict[str, str]) -> float:
    """Operations per second of one run: per second of wall-clock time for the round trips
    (the server's time is part of them), per second of the program's own CPU time for the
    files (the machines are shared: a program that waits for a core is not slower)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)
    count, seconds = out.split()
    if argv[1] == "files":
        return int(count) / (usage.ru_utime + usage.ru_stime)
    return int(count) / float(seconds)


def pair(first: tuple[list[str], dict[str, str]], second: tuple[list[str], dict[str, str]],
         swap: bool) -> tuple[float, float]:
    """Both runs, in the order ``swap`` says; their rates in the order given."""
    if swap:
        b = rate(*second)
        a = rate(*first)
    else:
        a = rate(*first)
        b = rate(*second)
    return a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one run")
    parser.add_argument("--rounds", type=int, default=11, help="pairs of runs per figure")
    parser.add_argument("--verbose", action="store_true", help="print every round")
    args = parser.parse_args()
    library = library_path()
    if not library.is_file():
        sys.exit(f"{library} is missing: run scripts/bootstrap")
    seconds = str(args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        exe = str(build(tmpdir))
        files = tmpdir / "files"
        files.mkdir()
        for k in range(16):
            (files / str(k)).write_bytes(os.urandom(4096))
        plain = dict(os.environ)
        plain.pop("LD_PRELOAD", None)
        wrapped = dict(plain, LD_PRELOAD=str(library), IOASIDS_RUNTIME_DIR=tmp)
        system = System(profile("fixed"))
        server = UserApiServer(system, tmp)
        server.start()
        try:
            ioctl_runs, file_runs = [], []
            for r in range(args.rounds):
                swap = bool(r % 2)
                lib, raw = pair(([exe, "ioctl", seconds], wrapped),
                                ([exe, "raw", server.path, seconds], plain), swap)
                ioctl_runs.append((lib, raw))
                lib, bare = pair(([exe, "files", str(files), seconds], wrapped),
                                 ([exe, "files", str(files), seconds], plain), swap)
                file_runs.append((lib, bare))
                if args.verbose:
                    print(f"round {r}: ioctl {ioctl_runs[-1][0]:,.0f} raw "
                          f"{ioctl_runs[-1][1]:,.0f}; files {lib:,.0f} bare {bare:,.0f}")
        finally:
            server.stop()
    for title, runs, unit, target in (
            ("ioctl ALLOC+FREE pairs: library / raw socket", ioctl_runs, "pairs/s", 0.9),
            ("ordinary files: with the library / without", file_runs, "opens/s", 0.95)):
        ratio = statistics.median(a / b for a, b in runs)
        print(f"{title}: {statistics.median(a for a, _ in runs):,.0f} vs "
              f"{statistics.median(b for _, b in runs):,.0f} {unit}, ratio {ratio:.3f} "
              f"(target >= {target}) {'ok' if ratio >= target else 'MISSED'}")


if __name__ == "__main__":
    main()
