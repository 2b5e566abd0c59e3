"""Make ``marshal-journal/``: a state directory left by a daemon killed with records in its
journal, written by a version of ioasidsd whose journal codec was Python's ``marshal``.

Run with such a version on the path (the project at commit 1dc3d8e or before; the second
argument is that tree, checked to be the one imported), for example::

    git worktree add /tmp/old 1dc3d8e
    PYTHONPATH=/tmp/old .venv/bin/python tests/store/data/make_marshal_journal.py OUT /tmp/old

It writes ``OUT/state.sqlite`` (the database, checkpointed into one file), ``OUT/state.journal.N``
(cut to its records) and ``OUT/expected.json``: the model's ``snapshot.dump`` when it died.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import traceback
from errno import ESRCH
from pathlib import Path
from typing import ClassVar

from ioasidsd.host import ProcessFacts, ProcessSource
from ioasidsd.model import IoasidError, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.snapshot import dump
from ioasidsd.store import journal
from ioasidsd.store.state import Store
from ioasidsd.system import System


class Processes(ProcessSource):
    """Processes that exist because this script says so, with no parents."""

    live: ClassVar[dict[int, float]] = {100: 1.0, 101: 2.0}

    def facts(self, pid: int) -> ProcessFacts:
        if pid not in self.live:
            raise IoasidError(ESRCH, f"no process {pid}")
        return ProcessFacts(pid, self.live[pid], (0, 0, 0), pid, 1)

    def all_pids(self) -> list[int]:
        return sorted(self.live)

    def parent(self, pid: int) -> int | None:
        return None


def main(out: Path) -> None:
    assert journal.__file__.startswith(sys.argv[2]), journal.__file__
    out.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:
        try:
            store = Store.open(out, fold_interval=3600.0)
            system = System(profile("fixed"), processes=Processes(), on_change=store.apply)
            store.bind(system)
            system.mkdir("/tenant")
            system.write_max("/tenant", "300")
            system.mkdir("/tenant/a")
            system.write_max("/tenant/a", "200")
            system.write_release_agent(b"\xa0/opt/\xff\xfe caf\xc3\xa9 \xed\xa0\x80\n")
            system.write_procs("/tenant/a", "100", writer_pid=1, writer_uid=0)
            system.write_procs("/tenant", "101", writer_pid=1, writer_uid=0)
            file = system.ioasid_open(100)
            batch = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 150)
            _count, ids = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch)
            half = ids[: 4 * 50]
            free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(half), 0, 50) + half
            system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)
            other = system.ioasid_open(101)
            system.ioasid_ioctl(other, uapi.IOASID_REQUEST_ALLOC,
                                uapi.ALLOC_REQUEST.pack(16, 0, 7, 9))
            (out / "expected.json").write_text(json.dumps(dump(system.core), sort_keys=True))
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(0)  # no close: the journal stays, unfolded
    os.waitpid(pid, 0)
    db = sqlite3.connect(out / "state.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    for number, path in journal.segments(out):
        segment = journal.read_segment(number, path)
        assert segment.payloads and segment.torn is None, segment
        os.truncate(path, segment.end)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
