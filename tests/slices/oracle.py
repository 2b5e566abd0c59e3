"""systemd itself as the judge: ``systemd-analyze verify`` and ``systemd-escape``.

``systemd-analyze verify`` loads unit files the way the service manager does without
running one. It is made to show what it read by using ``TasksMax=`` with values that are
not numbers: it logs each such assignment with its file, its line and the value as parsed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ANALYZE = shutil.which("systemd-analyze")
ESCAPE = shutil.which("systemd-escape")

needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
needs_escape = pytest.mark.skipif(ESCAPE is None, reason="systemd-escape is not installed")

_TASKS = re.compile(r"^(?P<path>/.*):(?P<line>[0-9]+): (?:Invalid maximum tasks value "
                    r"'(?P<bad>.*)', ignoring: .*|Maximum tasks value '(?P<range>.*)' out of "
                    r"range, ignoring\.)$")


def verify(args: list[str], cwd: Path, unit_path: list[Path] | None = None) -> str:
    """Run ``systemd-analyze verify`` on ``args``; its log (stderr) as text."""
    assert ANALYZE is not None
    env = dict(os.environ)
    if unit_path is not None:
        env["SYSTEMD_UNIT_PATH"] = ":".join(str(d) for d in unit_path)
    env["SYSTEMD_LOG_COLOR"] = "0"
    done = subprocess.run([ANALYZE, "verify", "--man=no", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    return done.stderr


def tasks_max_reads(name: str, unit_path: list[Path], cwd: Path) -> list[tuple[str, int, str]]:
    """The ``TasksMax=`` assignments systemd reads for unit ``name``, in the order it reads
    them, each once: (file, line, value)."""
    seen: list[tuple[str, int, str]] = []
    for line in verify([name], cwd, unit_path).splitlines():
        match = _TASKS.match(line)
        if match:
            read = (match["path"], int(match["line"]), match["bad"] or match["range"])
            if read not in seen:
                seen.append(read)
    return seen


def refused_names(names: list[str], directory: Path) -> set[str]:
    """Of ``names`` (each written as a unit file in ``directory`` with an empty ``[Unit]``
    section), those whose name systemd refuses. One run each: a name that is refused can stop
    a run before the names after it are looked at."""
    refused = set()
    for name in names:
        (directory / name).write_text("[Unit]\n")
        log = verify([f"./{name}"], directory)
        if (f"Unit {name} failed to load" in log or f"unit file {directory}/{name}:" in log
                or f"filename ./{name}:" in log):
            refused.add(name)
    return refused


def escape(*words: str, suffix: str | None = None) -> list[str]:
    """``systemd-escape`` of each word."""
    assert ESCAPE is not None
    args = [ESCAPE, *([f"--suffix={suffix}"] if suffix else []), "--", *words]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()
