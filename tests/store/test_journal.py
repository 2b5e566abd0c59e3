"""The store's journal: a change is in it when ``apply`` returns, a daemon that died is
recovered from it (records folded already, a record cut short), the folder empties it into
the database, a clean close leaves none, and failures are reported and retried."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import struct
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon.daemons import wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from system.ops import FakeProcesses, apply_op, op_strategy

from ioasidsd.cli.render import format_status
from ioasidsd.model import IoasidError, IoasidSetType, profile
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.snapshot import dump, load
from ioasidsd.store import codec, journal
from ioasidsd.store.fold import CGROUP
from ioasidsd.store.state import Store, StoreError
from ioasidsd.system import System

SETTINGS = settings(max_examples=int(os.environ.get("IOASIDS_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
NEVER = 3600.0  # a fold interval no test waits for: only fold() folds


class Processes(FakeProcesses):
    """Fake processes without parents (the user API looks for a tracked ancestor)."""

    def parent(self, pid: int) -> int | None:
        return None


def bound(state_dir: Path, knobs=None, **kwargs: Any) -> tuple[Store, System]:
    """A new store in ``state_dir`` bound to a new system that reports to it."""
    store = Store.open(state_dir, **kwargs)
    system = System(knobs or profile("fixed"), processes=Processes(), on_change=store.apply)
    store.bind(system)
    return store, system


def stored(state_dir: Path, knobs=None) -> dict[str, Any]:
    """What a restarted daemon would rebuild from ``state_dir`` (database and journal)."""
    store = Store.open(state_dir)
    try:
        snap = store.load()
    finally:
        store.close()
    copy = System(knobs or profile("fixed"), processes=Processes())
    load(snap, copy.core)
    return dump(copy.core)


def records(state_dir: Path) -> list[list[tuple]]:
    """The records of the journal's files, read from disk."""
    found = []
    for number, path in journal.segments(state_dir):
        segment = journal.read_segment(number, path)
        found.extend(list(codec.decode(segment.codec, payload)) for payload in segment.payloads)
    return found


def raw_cgroups(state_dir: Path) -> dict[str, int | None]:
    """Name -> limit of the cgroups the database file itself holds (no journal)."""
    db = sqlite3.connect(state_dir / "state.sqlite")
    try:
        return dict(db.execute("SELECT name, lim FROM cgroups WHERE parent IS NOT NULL"))
    finally:
        db.close()


def json_ready(value: Any) -> Any:
    return json.loads(json.dumps(value))


def crashed(scenario: Callable[[Callable[[Any], None]], None]) -> list[Any]:
    """Run ``scenario(report)`` in a child process, then ``kill -9`` it: what it reported
    (JSON data, through a pipe) is returned once it finished."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)

            def report(value: Any) -> None:
                os.write(write_end, json.dumps(value).encode() + b"\n")

            scenario(report)
            os.write(write_end, b'"done"\n')
            signal.pause()
        except BaseException:
            os.write(write_end, json.dumps({"error": traceback.format_exc()}).encode() + b"\n")
        finally:
            os._exit(1)
    os.close(write_end)
    reported = []
    try:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                value = json.loads(line)
                assert not (isinstance(value, dict) and "error" in value), value.get("error")
                if value == "done":
                    return reported
                reported.append(value)
        raise AssertionError("the child died before it was done")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# ---------------------------------------------------------------------------------- durable
def test_a_change_is_in_the_journal_when_apply_returns(tmp_path):
    """Another process reads each change from the journal as soon as the writer's change
    returned; after ``kill -9`` nothing was folded, and all of it comes back."""
    read_end, write_end = os.pipe()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.close(go_write)
            _, system = bound(tmp_path, fold_interval=NEVER)
            for i in range(20):
                system.mkdir(f"/c{i}")
                system.write_max(f"/c{i}", str(i))
                os.write(write_end, b"x")
                os.read(go_read, 1)  # the parent has looked
            signal.pause()
        finally:
            os._exit(1)
    os.close(write_end)
    os.close(go_read)
    try:
        for i in range(20):
            assert os.read(read_end, 1) == b"x", "the writer died"
            limits = {op[2][1]: op[2][2] for record in records(tmp_path) for op in record
                      if op[0] == CGROUP and op[2] is not None}
            assert limits.get(f"c{i}") == i
            os.write(go_write, b"y")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(go_write)
    assert raw_cgroups(tmp_path) == {}  # nothing was folded: the journal holds it all
    back = {c["name"]: c["limit"] for c in stored(tmp_path)["cgroups"] if c["parent"]}
    assert back == {f"c{i}": i for i in range(20)}


def test_recovery_replays_records_folded_already(tmp_path):
    """The daemon died after a fold and before it removed the folded segment: replaying it,
    then the newer one, gives the last state, not the older one."""
    def scenario(report):
        store, system = bound(tmp_path, fold_interval=NEVER)
        system.mkdir("/a")
        system.write_max("/a", "3")
        (_, path), = journal.segments(tmp_path)
        folded = path.read_bytes()
        assert store.fold()
        system.write_max("/a", "5")
        system.mkdir("/b")
        path.write_bytes(folded)  # as if the folder had not removed it yet
        report(dump(system.core))

    final, = crashed(scenario)
    assert raw_cgroups(tmp_path) == {"a": 3}
    assert len(journal.segments(tmp_path)) == 2
    assert stored(tmp_path) == final
    store = Store.open(tmp_path)  # a restarted daemon: load, rebuild, bind (folds the journal)
    again = System(processes=Processes(), on_change=store.apply)
    store.bind(again, load(store.load(), again.core))
    assert raw_cgroups(tmp_path) == {"a": 5, "b": 0}
    assert records(tmp_path) == []
    store.close()
    assert journal.segments(tmp_path) == []
    assert stored(tmp_path) == final


@pytest.mark.parametrize(("damage", "reported"), [
    ("copy stopped", "bad checksum"),  # a mapped segment: the rest of the record is zeros
    ("write cut short", "cut short"),  # a file written with write(2): it ends early
    ("header cut short", "header cut short"),
    ("garbled", "bad checksum"),
    ("frame not copied yet", "header cut short"),  # the payload is copied before its frame
])
def test_a_torn_last_record_is_ignored(tmp_path, damage, reported):
    """The daemon died in the middle of writing its last record: that change was never
    acknowledged, so the state comes back as it was before it."""
    def scenario(report):
        _, system = bound(tmp_path, fold_interval=NEVER)
        system.mkdir("/a")
        system.write_max("/a", "3")
        report(dump(system.core))
        system.write_max("/a", "4")

    before, = crashed(scenario)
    (number, path), = journal.segments(tmp_path)
    segment = journal.read_segment(number, path)
    data = bytearray(path.read_bytes())
    end = segment.end
    start = end - len(segment.payloads[-1]) - 8  # where the last record's frame begins
    assert struct.unpack_from("<I", data, start)[0] == len(segment.payloads[-1])
    if damage == "copy stopped":
        data[end - 20 : end] = bytes(20)
    elif damage == "write cut short":
        del data[end - 3 :]
    elif damage == "header cut short":
        del data[start + 5 :]
    elif damage == "frame not copied yet":
        data[start : start + 8] = bytes(8)
    else:
        data[end - 1] ^= 0xFF
    path.write_bytes(data)
    warnings = []
    store = Store.open(tmp_path, warn=warnings.append)
    snap = store.load()
    store.close()
    copy = System(processes=Processes())
    load(snap, copy.core)
    assert dump(copy.core) == before
    assert any(reported in w and "not acknowledged" in w for w in warnings), warnings


def test_a_journal_that_is_not_ours_is_refused(tmp_path):
    store, system = bound(tmp_path)
    system.mkdir("/a")
    store.close()
    (tmp_path / "state.journal.7").write_bytes(b"#!/bin/sh\necho this is not a journal\n")
    with pytest.raises(StoreError, match=r"state\.journal\.7: not an ioasidsd journal"):
        Store.open(tmp_path).load()
    (tmp_path / "state.journal.7").write_bytes(b"IOASIDSJ" + struct.pack("<II", 99, 1))
    with pytest.raises(StoreError, match=r"journal format 99 .*reads format 1"):
        Store.open(tmp_path).load()
    (tmp_path / "state.journal.7").write_bytes(b"IOASIDSJ" + struct.pack("<II", 1, 3))
    with pytest.raises(StoreError, match=r"journal format 1 \(codec 3\).*codecs 1, 2"):
        Store.open(tmp_path).load()


# ---------------------------------------------------------------------------------- codecs
OLD_JOURNAL = Path(__file__).parent / "data" / "marshal-journal"


def test_records_are_written_in_messagepack_whatever_python_reads_them(tmp_path):
    """A new segment says MessagePack in its header, and its records are MessagePack arrays
    of operations that a reader without Python's ``marshal`` decodes (checked with a decoder
    that knows nothing of this project)."""
    import msgpack

    def scenario(report):
        _, system = bound(tmp_path, fold_interval=NEVER)
        system.mkdir("/a")
        system.write_max("/a", "3")
        system.write_release_agent(b"/opt/\xff caf\xc3\xa9\n")
        report(dump(system.core))

    final, = crashed(scenario)
    (number, path), = journal.segments(tmp_path)
    segment = journal.read_segment(number, path)
    assert path.read_bytes()[8:16] == struct.pack("<II", 1, codec.CODEC_MSGPACK)
    assert segment.codec == codec.CODEC_MSGPACK
    plain = [msgpack.unpackb(p, unicode_errors="surrogatepass") for p in segment.payloads]
    assert all(isinstance(ops, list) and all(isinstance(op, list) for op in ops)
               for ops in plain)
    limits = {op[2][1]: op[2][2] for ops in plain for op in ops
              if op[0] == CGROUP and op[2] is not None}
    assert limits["a"] == 3
    assert json_ready(stored(tmp_path)) == json_ready(final)


def test_records_read_together_are_those_read_one_by_one(tmp_path):
    """The folder reads its records as one MessagePack stream: the same operations as each
    record decoded alone; a record that cannot be read is refused as alone, after the ones
    before it were given, whether it is garbled or two records in one."""
    store, system = bound(tmp_path, fold_interval=NEVER)
    system.mkdir("/a")
    system.write_max("/a", "3")
    system.mkdir("/caf\u00e9")  # text beyond ASCII
    system.set_attrs("/a", {"": {"mode": 0o700, "uid": 1000}})
    system.processes.live[10] = 1.0
    f = system.ioasid_open(10)
    count, ids = system.ioasid_ioctl(f, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                     uapi.ALLOC_BATCH.pack(20, 0, 1, 1000, 300))
    for ioasid in struct.unpack(f"={count}i", ids)[:3]:
        system.ioasid_ioctl(f, uapi.IOASID_REQUEST_FREE, struct.pack("=i", ioasid))
    (number, path), = journal.segments(tmp_path)
    payloads = journal.read_segment(number, path).payloads
    one_by_one = [codec.decode(codec.WRITTEN, payload) for payload in payloads]
    assert len(payloads) >= 8
    assert list(codec.decode_all(codec.WRITTEN, payloads)) == one_by_one
    garbled = b"\xc1"  # a byte MessagePack never uses
    two_in_one = payloads[0] + payloads[1]
    for bad in (garbled, two_in_one):
        given_ = []
        with pytest.raises(codec.RecordError):
            for ops in codec.decode_all(codec.WRITTEN, [*payloads[:5], bad, *payloads[5:]]):
                given_.append(ops)
        assert given_ == one_by_one[:5]
    store.close()


def test_a_journal_in_the_older_marshal_codec_is_replayed(tmp_path):
    """A state directory left by a daemon killed while its journal (written by a version whose
    codec was ``marshal``: ``data/make_marshal_journal.py``) held unfolded records: it loads
    as the model was when it died, and binding folds it and goes on in MessagePack."""
    import shutil

    shutil.copytree(OLD_JOURNAL, tmp_path, dirs_exist_ok=True)
    expected = json.loads((tmp_path / "expected.json").read_text())
    (number, path), = journal.segments(tmp_path)
    assert journal.read_segment(number, path).codec == codec.CODEC_MARSHAL_2
    assert raw_cgroups(tmp_path) == {}  # all of it is in the journal
    assert json_ready(stored(tmp_path)) == expected
    store = Store.open(tmp_path)
    system = System(processes=Processes(), on_change=store.apply)
    store.bind(system, load(store.load(), system.core))
    assert raw_cgroups(tmp_path) == {"tenant": 300, "a": 200}  # folded at bind
    system.write_max("/tenant/a", "250")
    assert [journal.read_segment(*s).codec for s in journal.segments(tmp_path)] == [
        codec.CODEC_MSGPACK]
    store.close()
    expected["cgroups"][2]["limit"] = 250
    assert [c["name"] for c in expected["cgroups"]] == ["", "tenant", "a"]
    assert json_ready(stored(tmp_path)) == expected


def test_a_marshal_record_this_python_cannot_read_is_refused_with_the_way_out(tmp_path):
    """A record in the older codec that this Python's ``marshal`` cannot decode (as one
    written by a Python whose ``marshal`` differs would be) is refused, naming the file and
    saying how to fold it; nothing is changed."""
    import shutil

    shutil.copytree(OLD_JOURNAL, tmp_path, dirs_exist_ok=True)
    (_, path), = journal.segments(tmp_path)
    payload = b"\xfe not marshal"
    path.write_bytes(path.read_bytes()[:16] + struct.pack("<II", len(payload),
                                                          zlib.crc32(payload)) + payload)
    before = path.read_bytes()
    with pytest.raises(StoreError, match=r"state\.journal\.1: .*marshal.*cannot be read.*"
                                         r"start that version and stop it cleanly"):
        Store.open(tmp_path).load()
    assert path.read_bytes() == before


# ---------------------------------------------------------------------------------- folding
def test_the_folder_folds_by_itself_and_empties_the_journal(tmp_path):
    store, system = bound(tmp_path, fold_interval=0.05)
    for round_ in range(2):
        for i in range(10):
            system.mkdir(f"/r{round_}c{i}")
        assert records(tmp_path) != []
        wait_until(lambda: store.pending == 0, "the folder")
        assert raw_cgroups(tmp_path) == {f"r{r}c{i}": 0 for r in range(round_ + 1)
                                         for i in range(10)}
        assert records(tmp_path) == []  # the folded segments are gone
        assert len(journal.segments(tmp_path)) == 1  # the one being written, empty
    store.close()


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_a_clean_close_folds_everything_and_leaves_no_journal(tmp_path, synchronous):
    store, system = bound(tmp_path, fold_interval=NEVER, synchronous=synchronous)
    system.mkdir("/a")
    system.write_max("/a", "9")
    assert records(tmp_path) != [] and raw_cgroups(tmp_path) == {}
    store.close()
    assert journal.segments(tmp_path) == []
    assert raw_cgroups(tmp_path) == {"a": 9}
    assert stored(tmp_path) == dump(system.core)


def spare_made(state_dir: Path, other_than: int | None = None) -> int:
    """Wait for the folder's spare segment (another than the file ``other_than``, an inode
    number) and return its inode number."""
    spare = state_dir / journal.SPARE_NAME

    def made() -> bool:
        with contextlib.suppress(FileNotFoundError):
            return spare.stat().st_ino != other_than
        return False

    wait_until(made, "the spare segment")
    return spare.stat().st_ino


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_the_next_segment_is_made_ahead_and_only_named_under_the_lock(tmp_path, monkeypatch,
                                                                     synchronous):
    """The folder makes the next segment before it is needed, without holding the lock every
    change takes; a rotation only names it (a link). Records then go into it, and a clean
    close leaves neither journal nor spare."""
    store, system = bound(tmp_path, fold_interval=NEVER, synchronous=synchronous)
    folder = store._folder
    spare = spare_made(tmp_path)
    made = []
    real_init = journal.SegmentWriter.__init__

    def watched(self, directory, number, **kwargs):
        made.append((number, folder._lock.locked()))
        real_init(self, directory, number, **kwargs)

    monkeypatch.setattr(journal.SegmentWriter, "__init__", watched)
    for round_ in range(3):
        system.mkdir(f"/r{round_}")
        assert store.fold()
        (_, newest), = journal.segments(tmp_path)  # the folded one is gone
        assert newest.stat().st_ino == spare  # the rotation took the spare
        spare = spare_made(tmp_path, other_than=spare)
    assert made and all(number is None and not locked for number, locked in made)
    system.mkdir("/last")
    assert [op[2][1] for record in records(tmp_path) for op in record
            if op[0] == CGROUP and op[2] is not None and op[2][1] == "last"] == ["last"]
    store.close()
    assert journal.segments(tmp_path) == [] and not (tmp_path / journal.SPARE_NAME).exists()
    assert stored(tmp_path) == dump(system.core)


def test_a_spare_named_without_its_directory_flushed_is_replaced(tmp_path, monkeypatch):
    """With ``synchronous = "full"`` a spare is taken only once its new name is flushed to
    the disk: when that flush fails, the segment it became (no records) is removed and the
    next one made in its place; nothing acknowledged is lost, and nothing is left behind."""
    store, system = bound(tmp_path, fold_interval=NEVER, synchronous="full")
    system.mkdir("/a")
    spare = spare_made(tmp_path)
    failed = []
    real_sync = journal.SegmentWriter._sync_directory

    def flaky(self):
        if self.number is not None and not failed and self.path.stat().st_ino == spare:
            failed.append(self.path.name)
            raise OSError(errno.EIO, "flush failed")
        real_sync(self)

    monkeypatch.setattr(journal.SegmentWriter, "_sync_directory", flaky)
    system.mkdir("/b")
    assert store.fold()
    assert failed  # the rotation took the spare, and its name's flush failed
    (_, newest), = journal.segments(tmp_path)
    assert newest.name == failed[0]  # made in its place (its inode may be the same, reused)
    system.write_max("/b", "5")
    assert records(tmp_path) != []
    assert stored(tmp_path) == dump(system.core)
    store.close()
    assert journal.segments(tmp_path) == [] and not (tmp_path / journal.SPARE_NAME).exists()
    assert raw_cgroups(tmp_path) == {"a": 0, "b": 5}


@pytest.mark.parametrize("left", ["spare", "linked", "partial"])
def test_a_daemon_killed_around_its_spare_segment_loses_nothing(tmp_path, left):
    """``kill -9`` with the spare made (``spare``), in the middle of naming it (``linked``:
    the segment's name made, the spare's not removed yet) or of making it (``partial``: its
    blocks reserved, nothing written): every change acknowledged comes back, and the
    restarted daemon replaces the spare and leaves none at a clean stop."""
    def scenario(report):
        store, system = bound(tmp_path, fold_interval=NEVER)
        system.mkdir("/a")
        spare_made(tmp_path)
        assert store.fold()
        system.mkdir("/b")
        system.write_max("/b", "4")
        spare_made(tmp_path)
        spare = tmp_path / journal.SPARE_NAME
        if left == "linked":
            os.link(spare, tmp_path / f"{journal.PREFIX}{store._folder._next}")
        elif left == "partial":
            spare.unlink()
            spare.write_bytes(bytes(journal.SEGMENT_BYTES))
        report(dump(system.core))

    final, = crashed(scenario)
    assert stored(tmp_path) == final
    store = Store.open(tmp_path)  # a restarted daemon: load, rebuild, bind (folds the journal)
    again = System(processes=Processes(), on_change=store.apply)
    store.bind(again, load(store.load(), again.core))
    spare_made(tmp_path)
    again.mkdir("/c")
    store.close()
    assert journal.segments(tmp_path) == [] and not (tmp_path / journal.SPARE_NAME).exists()
    assert raw_cgroups(tmp_path) == {"a": 0, "b": 4, "c": 0}
    assert stored(tmp_path) == dump(again.core)


def test_a_failed_fold_is_reported_and_retried_by_itself(tmp_path):
    warnings, notes = [], []
    store, system = bound(tmp_path, fold_interval=0.05, warn=warnings.append,
                          note=notes.append)
    store.db.execute("PRAGMA query_only=1")  # the database refuses writes
    system.mkdir("/a")
    wait_until(lambda: store.error is not None, "the fold to fail")
    assert "mkdir" in store.error and "wait in the journal" in store.error
    assert store.pending == 1 and len(records(tmp_path)) == 1
    status = {"state": {"path": "p", "synchronous": "normal", "error": store.error,
                        "unfolded": store.pending}}
    line = format_status(_status(status)).splitlines()[-1]
    assert "1 changes in the journal" in line and "ERROR: mkdir" in line
    system.mkdir("/b")  # changes go on being recorded meanwhile
    store.db.execute("PRAGMA query_only=0")
    wait_until(lambda: store.error is None and store.pending == 0, "a retry to succeed")
    assert raw_cgroups(tmp_path) == {"a": 0, "b": 0}
    assert len(warnings) == 1 and any("folded" in n and "again" in n for n in notes)
    store.close()


def _status(partial: dict[str, Any]) -> dict[str, Any]:
    """A whole status reply around ``partial``, for ``format_status``."""
    return {"pid": 1, "version": "0", "uptime": 1.0, "profile": "fixed", "knobs": {},
            "quirks": [], "capacity": 10, "available": 10, "cgroups": 1, "processes": 0,
            "sets": 0, "ioasids": 0, "tracking": {"mode": "poll", "detail": "-"},
            "mount": "/m", **partial}


def test_an_unwritable_journal_is_reported_and_the_change_still_folded(tmp_path):
    """The segment is full and the next one cannot be created: the change is not durable
    until folded, which the store says; it is folded from memory, and once a segment can be
    made the journal goes on."""
    warnings, notes = [], []
    store, system = bound(tmp_path, fold_interval=NEVER, warn=warnings.append,
                          note=notes.append)
    (current, _), = journal.segments(tmp_path)
    blocker = tmp_path / f"{journal.PREFIX}{current + 1}"
    blocker.mkdir()  # the next segment's name is taken
    writer = store._folder._writer
    writer._end = writer._pos  # no room left in this one
    system.mkdir("/a")
    assert store.error is not None and "journal" in store.error and "mkdir" in store.error
    assert len(warnings) == 1 and "File exists" in warnings[0]
    assert store.fold()
    assert raw_cgroups(tmp_path) == {"a": 0}
    blocker.rmdir()
    system.mkdir("/b")
    assert store.error is None and any("written again" in n for n in notes)
    assert any(op[0] == CGROUP and op[2] and op[2][1] == "b"
               for record in records(tmp_path) for op in record)
    store.close()
    assert stored(tmp_path) == dump(system.core)


def test_where_blocks_cannot_be_reserved_records_are_written(tmp_path, monkeypatch):
    """A file system without ``fallocate``: each record is one ``write(2)``; a write that
    fails (disk full) is reported, the change folded from memory, and the journal goes on in
    a new segment."""
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    warnings, notes = [], []
    store, system = bound(tmp_path, fold_interval=NEVER, warn=warnings.append,
                          note=notes.append)
    assert not store._folder._writer.mapped
    system.mkdir("/a")
    (number, path), = journal.segments(tmp_path)
    assert path.stat().st_size == journal.read_segment(number, path).end  # no unused end
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, store._folder._writer._fd)  # every write now fails with ENOSPC
    finally:
        os.close(full)
    system.mkdir("/b")
    assert store.error is not None and "No space left on device" in store.error
    assert store.fold() and raw_cgroups(tmp_path) == {"a": 0, "b": 0}
    system.mkdir("/c")
    assert store.error is None and any("written again" in n for n in notes)
    assert len(records(tmp_path)) == 1  # /c's, in the segment the fold started
    store.close()
    assert journal.segments(tmp_path) == []
    assert stored(tmp_path) == dump(system.core)


@SETTINGS
@given(steps=st.lists(st.tuples(op_strategy, st.booleans()), max_size=60),
       replayed=st.integers(0, 30))
def test_folds_at_any_point_leave_the_database_equal_to_the_model(tmp_path_factory, steps,
                                                                   replayed):
    """However the records are cut into folds, the database alone ends as the model; and a
    crash that left folded segments behind (any run of them up to the newest) replays to the
    same state."""
    from system.ops import PROFILES

    for name, overrides in PROFILES[:2]:
        state = tmp_path_factory.mktemp("state")
        knobs = profile(name, **overrides)
        store = Store.open(state, fold_interval=NEVER)
        system = System(knobs, processes=FakeProcesses(), on_change=store.apply)
        store.bind(system)
        seen: dict[int, bytes] = {}
        for op, fold_now in steps:
            touched = apply_op(system, op)
            if touched is not None:
                with system.lock:
                    system.on_change(touched)
            if fold_now:
                _keep_segments(state, seen)
                assert store.fold()
        _keep_segments(state, seen)
        assert store.fold() and store.error is None
        assert records(state) == []  # what follows reads the database alone
        assert stored(state, knobs) == dump(system.core)
        numbers = sorted(seen)
        for number in numbers[len(numbers) - 1 - replayed % len(numbers):]:
            (state / f"{journal.PREFIX}{number}").write_bytes(seen[number])
        assert stored(state, knobs) == dump(system.core)
        store.close()


def _keep_segments(state_dir: Path, seen: dict[int, bytes]) -> None:
    for number, path in journal.segments(state_dir):
        seen[number] = path.read_bytes()


# ---------------------------------------------------------------------------------- sets
def test_batches_are_one_record_each_and_fold_to_their_rows(tmp_path):
    store, system = bound(tmp_path, fold_interval=NEVER)
    system.processes.live[10] = 1.0
    file = system.ioasid_open(10)
    batch = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 4096)
    before = len(records(tmp_path))
    count, out = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch)
    assert count == 4096 and len(records(tmp_path)) == before + 1
    assert store.fold()
    rows = store.db.execute("SELECT count(*), min(id), max(id) FROM ioasids").fetchone()
    assert rows == (4096, 1, 4096)
    assert store.db.execute("SELECT nr_ioasids FROM sets").fetchall() == [(4096,)]
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(out), 0, 4096) + out
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch)  # alloc, free, alloc:
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)  # one fold
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, 7, 9))
    assert store.fold()
    assert store.db.execute("SELECT id, set_id FROM ioasids").fetchall() == [
        (7, file.user.ioasid_set.id)]
    assert store.db.execute("SELECT nr_ioasids FROM sets").fetchall() == [(1,)]
    assert stored(tmp_path) == dump(system.core)
    store.close()


def test_a_batch_costs_what_it_changed_not_the_size_of_its_set(tmp_path):
    """A batch of many IDs alike is one ``IOASIDS`` operation, whatever its set holds; a small
    batch in a large set is written as its own rows; a smaller batch that makes up much of its
    set (or empties it) as the set's ranges. Either way what is rebuilt is the model."""
    from ioasidsd.store.fold import IOASID, IOASIDS, SET_IOASIDS

    def kinds() -> list[int]:
        return [op[0] for op in records(tmp_path)[-1]]

    store, system = bound(tmp_path, fold_interval=NEVER)
    system.processes.live[10] = 1.0
    file = system.ioasid_open(10)
    big = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 4096)
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, big)  # the whole set, alike
    assert kinds().count(IOASIDS) == 1 and SET_IOASIDS not in kinds() and IOASID not in kinds()
    small = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 64)
    count, out = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, small)
    assert SET_IOASIDS not in kinds() and kinds().count(IOASID) == 64
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(out), 0, count) + out
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)
    assert SET_IOASIDS not in kinds() and kinds().count(IOASID) == 64
    assert stored(tmp_path) == dump(system.core)
    # the big batch freed: its rows gone as one operation, not 4096 rows nor the set
    ids = struct.pack(f"={4096}I", *range(1, 4097))
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(ids), 0, 4096) + ids
    assert system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)[0] == 4096
    assert kinds().count(IOASIDS) == 1 and SET_IOASIDS not in kinds() and IOASID not in kinds()
    assert stored(tmp_path) == dump(system.core)
    # too few to be a batch's slice, and all of their set: written with the set
    some = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 100)
    count, out = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, some)
    assert kinds().count(SET_IOASIDS) == 1 and IOASID not in kinds()
    assert stored(tmp_path) == dump(system.core)
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(out), 0, count) + out
    assert system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE_BATCH, free)[0] == 100
    assert kinds().count(SET_IOASIDS) == 1 and IOASID not in kinds()
    assert stored(tmp_path) == dump(system.core)
    store.close()


def test_ids_of_two_sets_in_one_change_are_each_written_as_they_cost_least(tmp_path):
    """A change naming many IDs of two sets: those that make up a quarter of their set are
    written with it, the other set's, alike, as one ``IOASIDS`` operation; never a row each."""
    from ioasidsd.store.fold import IOASID, IOASIDS, SET_IOASIDS

    store, system = bound(tmp_path, fold_interval=NEVER)
    ids = []
    for pid, count in ((10, 1000), (11, 4000)):
        system.processes.live[pid] = 1.0
        file = system.ioasid_open(pid)
        batch = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, count)
        _, out = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch)
        ids.append(list(struct.unpack(f"={count}I", out)))
    with system.lock:
        system.on_change(Change(ChangeKind.IOASID, ids=ids[0][:300] + ids[1][:300]))
    kinds = [op[0] for op in records(tmp_path)[-1]]
    assert kinds.count(SET_IOASIDS) == 1 and kinds.count(IOASIDS) == 1 and IOASID not in kinds
    assert stored(tmp_path) == dump(system.core)
    store.close()


def test_ids_hidden_from_their_sets_index_are_kept(tmp_path):
    """``v4``: freeing a set's IOASIDs hides the still-referenced ones from its index; the
    set reported whole still holds them."""
    knobs = profile("v4")
    store, system = bound(tmp_path, knobs, fold_interval=NEVER)
    system.processes.live[5] = 1.0
    proc = system.process(5)
    with system.lock:
        s = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
        ids = [system.core.alloc(s, 1, 100, task=proc) for _ in range(3)]
        system.core.get(None, ids[1])  # held elsewhere: stays FREE_PENDING
        system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(proc,)))
        system.core.free_all_in_set(s, task=proc)
        assert s.xa == set() and s.nr_ioasids == 1
        system.on_change(Change(ChangeKind.SET, sets=(s.id,), processes=(proc,)))
    assert stored(tmp_path, knobs) == dump(system.core)
    assert store.fold()
    assert store.db.execute("SELECT id, indexed FROM ioasids").fetchall() == [(ids[1], 0)]
    with system.lock:
        system.core.put(None, ids[1], task=proc)
        system.on_change(Change(ChangeKind.IOASID, ids=[ids[1]], processes=(proc,)))
    assert stored(tmp_path, knobs) == dump(system.core)
    store.close()


# ---------------------------------------------------------------------------------- daemon
def test_the_daemon_keeps_its_journal_over_kill9_and_empties_it_at_sigterm(daemons):
    d = daemons().start()
    (d.mount / "a").mkdir()
    (d.mount / "a" / "ioasids.max").write_text("6\n")
    d.kill9()
    assert any(op[0] == CGROUP and op[2] and op[2][1] == "a"
               for record in records(d.state) for op in record) or \
        raw_cgroups(d.state) == {"a": 6}  # in the journal, unless the folder was quicker
    d.start()
    assert (d.mount / "a" / "ioasids.max").read_text() == "6\n"
    assert journal.segments(d.state) != []  # the one it writes to
    (d.mount / "b").mkdir()
    assert d.stop() == 0
    assert journal.segments(d.state) == []
    assert raw_cgroups(d.state) == {"a": 6, "b": 0}


def test_the_roots_limit_and_its_own_charges_are_durable(tmp_path):
    """With a limit on the root (``[limits] root_max``) the root's row counts the IOASIDs of
    its own processes: every change to it is in the journal, and a restart finds the limit and
    the count the model had."""
    def scenario(report):
        _, system = bound(tmp_path, fold_interval=NEVER)
        system.set_root_max(5)
        system.processes.live[10] = 1.0
        file = system.ioasid_open(10)
        batch = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 4)
        _, out = system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, batch)
        system.ioasid_ioctl(file, uapi.IOASID_REQUEST_FREE, out[:4])
        system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC, uapi.ALLOC_REQUEST.pack(16, 0, 7, 9))
        with pytest.raises(IoasidError):
            system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 2))
        root = system.cgroups.root
        assert (root.limit, root.counter, root.peak) == (5, 4, 5)  # as any cgroup's peak
        report(dump(system.core))

    final, = crashed(scenario)
    back = stored(tmp_path)
    assert back == final
    root = next(c for c in back["cgroups"] if c["parent"] is None)
    assert (root["limit"], root["counter"], root["peak"]) == (5, 4, 5)


def test_a_batchs_slices_are_one_operation_each_and_fold_to_their_rows(tmp_path):
    """A batch served in slices (``ioasidsd.userapi.batches``) in a set much larger than a
    slice: each slice's record holds its IDs as one ``IOASIDS`` operation, not a row each nor
    the whole set; what is rebuilt after any slice (and after a fold) is the model."""
    from ioasidsd.store.fold import IOASID, IOASIDS, SET_IOASIDS
    from ioasidsd.userapi.batches import SLICE, sliced

    store, system = bound(tmp_path, fold_interval=NEVER)
    system.processes.live[10] = 1.0
    file = system.ioasid_open(10)
    big = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 8 * SLICE)
    system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH, big)
    assert store.fold()

    def run(batch) -> tuple[int, bytes]:
        steps = 0
        while True:
            try:
                next(batch)
            except StopIteration as done:
                return done.value
            steps += 1
            kinds = [op[0] for op in records(tmp_path)[-1]]
            if kinds.count(IOASIDS):
                assert kinds.count(IOASIDS) == 1
                assert IOASID not in kinds and SET_IOASIDS not in kinds
            if steps % 2:
                assert stored(tmp_path) == dump(system.core)

    arg = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 100_000, 3 * SLICE + 7)
    count, out = run(sliced(system, file, uapi.IOASID_REQUEST_ALLOC_BATCH, arg, pid=10, uid=0))
    assert count == 3 * SLICE + 7 and len(system.core) == 11 * SLICE + 7
    assert sum(op[0] == IOASIDS for record in records(tmp_path) for op in record) == 3
    assert stored(tmp_path) == dump(system.core)
    free = uapi.FREE_BATCH.pack(uapi.FREE_BATCH.size + len(out), 0, count) + out
    assert run(sliced(system, file, uapi.IOASID_REQUEST_FREE_BATCH, free, pid=10,
                      uid=0)) == (count, b"")
    gone = [op for record in records(tmp_path) for op in record
            if op[0] == IOASIDS and op[2] is None]
    assert len(gone) == 3  # the last slice, of 7 IDs, is 7 rows
    assert stored(tmp_path) == dump(system.core)
    assert store.fold()
    assert store.db.execute("SELECT count(*) FROM ioasids").fetchone() == (8 * SLICE,)
    assert store.db.execute("SELECT nr_ioasids FROM sets").fetchall() == [(8 * SLICE,)]
    store.close()
    assert stored(tmp_path) == dump(system.core)


def test_a_daemon_killed_in_the_middle_of_a_sliced_batch_comes_back_consistent(tmp_path):
    """``kill -9`` between two slices of a batch: the slices made are durable, and the state
    rebuilt is the model as it was then (counters, capacity and rows agree)."""
    from ioasidsd.userapi.batches import SLICE, sliced

    def scenario(report):
        _, system = bound(tmp_path, fold_interval=NEVER)
        system.mkdir("/a")
        system.write_max("/a", str(100 * SLICE))
        system.processes.live[10] = 1.0
        system.write_procs("/a", "10", writer_pid=1, writer_uid=0)
        file = system.ioasid_open(10)
        system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC_BATCH,
                            uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 1 << 19,
                                                  8 * SLICE))
        arg = uapi.ALLOC_BATCH.pack(uapi.ALLOC_BATCH.size, 0, 1, 1 << 19, 6 * SLICE)
        batch = sliced(system, file, uapi.IOASID_REQUEST_ALLOC_BATCH, arg, pid=10, uid=0)
        for _ in range(3):
            next(batch)
        running.append(batch)  # not closed (which would free its slices): killed while open
        report(dump(system.core))

    running: list[object] = []
    final, = crashed(scenario)
    assert stored(tmp_path) == final
    a = next(c for c in final["cgroups"] if c["name"] == "a")
    assert a["counter"] == 11 * SLICE and len(final["ioasids"]) == 11 * SLICE
