"""``ioasidsd.store.state``: the database always holds what the model holds."""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import HealthCheck, example, given, settings
from system.ops import FakeProcesses, apply_op, ops_strategy

from ioasidsd.model import IoasidSetType, profile
from ioasidsd.model.changes import Change, ChangeKind
from ioasidsd.model.snapshot import dump, load
from ioasidsd.store.state import Store, StoreError
from ioasidsd.system import System

SETTINGS = settings(max_examples=int(os.environ.get("IOASIDS_EXAMPLES", "40")), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def bound(make_system, state_dir):
    """A new store in ``state_dir`` bound to a new system that reports to it."""
    store = Store.open(state_dir)
    system = make_system(on_change=store.apply)
    store.bind(system)
    return store, system


def stored_dump(make_system, state_dir):
    """What a restarted daemon would rebuild from ``state_dir``, as a snapshot."""
    store = Store.open(state_dir)
    try:
        snap = store.load()
    finally:
        store.close()
    copy = make_system()
    load(snap, copy.core)
    return dump(copy.core)


def report(system, touched):
    if touched is not None:
        with system.lock:
            system.on_change(touched)


@SETTINGS
@given(ops=ops_strategy)
# found by this test: an IOASID freed by a process in another cgroup, its set gone with it
# (auto lifetime): the cgroup it was charged to must still be rewritten
@example(ops=[(6, 0, 0, 0), (0, 0, 0, 0), (3, 0, 0, 1), (6, 1, 0, 0), (9, 0, 1, 0),
              (11, 0, 0, 0), (12, 0, 0, 0)])
def test_every_step_is_in_the_database(make_system, tmp_path_factory, ops):
    state = tmp_path_factory.mktemp("state")
    store, system = bound(make_system, state)
    for op in ops:
        report(system, apply_op(system, op))
        assert store.error is None
        assert stored_dump(make_system, state) == dump(system.core), op
    store.close()


def test_a_reopened_store_continues_where_it_stopped(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.processes.live[5] = 3.0
    system.mkdir("/a")
    system.write_max("/a", "4")
    proc = system.write_procs("/a", "5", writer_pid=1, writer_uid=0)
    store.close()

    store = Store.open(tmp_path)
    snap = store.load()
    again = make_system(on_change=store.apply)
    again.processes.live[5] = 3.0
    store.bind(again, load(snap, again.core))
    again.mkdir("/a/b")  # a new row id must not collide with the restored ones
    with again.lock:
        proc = again.cgroups.processes[5]
        s = again.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
        ioasid = again.core.alloc(s, 1, 10, task=proc)
        again.on_change(Change(ChangeKind.IOASID, ids=[ioasid], processes=(proc,)))
    assert stored_dump(make_system, tmp_path) == dump(again.core)
    store.close()


def test_pid_reuse_releases_the_old_process_rows(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.processes.live[5] = 1.0
    system.mkdir("/a")
    system.write_max("/a", "4")
    old = system.write_procs("/a", "5", writer_pid=1, writer_uid=0)
    with system.lock:
        s = system.core.set_alloc(old.mm, 0, IoasidSetType.MM)
        system.on_change(Change(ChangeKind.IOASID, ids=[system.core.alloc(s, 1, 10, task=old)],
                                processes=(old,)))
    system.processes.live[5] = 2.0  # pid 5 died unnoticed and was reused
    system.write_procs("/", "5", writer_pid=1, writer_uid=0)
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    store.close()


def test_removed_cgroup_rows_live_while_charged(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.processes.live[7] = 1.0
    system.mkdir("/a")
    system.write_max("/a", "3")
    proc = system.write_procs("/a", "7", writer_pid=1, writer_uid=0)
    with system.lock:
        s = system.core.set_alloc(proc.mm, 0, IoasidSetType.MM)
        ioasid = system.core.alloc(s, 1, 10, task=proc)
        system.core.get(None, ioasid)  # held elsewhere: outlives its owner
        system.on_change(Change(ChangeKind.IOASID, ids=[ioasid], processes=(proc,)))
    system.processes.live.pop(7)
    system.exit(7)
    system.rmdir("/a")
    system.mkdir("/a")  # same name again, a different cgroup
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    assert store.fold()  # the database itself, as other tools read it
    rows = store.db.execute("SELECT name, removed FROM cgroups ORDER BY id").fetchall()
    charged = system.core.data(ioasid).cgroup
    assert charged is not None and charged.counter in (0, 1)  # v4 may skip the uncharge
    assert rows.count(("a", 1)) == 1 and rows.count(("a", 0)) == 1
    store.close()


def test_failed_write_is_repaired_by_the_next_change(make_system, tmp_path):
    """The database refuses writes: the change is in the journal, the fold fails and says so;
    once the database takes writes again the next fold brings it up to date."""
    warnings = []
    store = Store.open(tmp_path, warn=warnings.append)
    system = make_system(on_change=store.apply)
    store.bind(system)
    store.db.execute("PRAGMA query_only=1")
    system.mkdir("/a")  # the face's write succeeds; the store records the failure
    assert not store.fold()
    assert store.error is not None and "mkdir" in store.error
    assert len(warnings) == 1
    store.db.execute("PRAGMA query_only=0")
    system.mkdir("/b")
    assert store.fold()
    assert store.error is None
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    store.close()


def test_not_a_database_is_a_clear_error(tmp_path):
    (tmp_path / "state.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"state\.sqlite"):
        Store.open(tmp_path)


def test_a_commit_is_durable_when_apply_returns(tmp_path):
    """kill -9 right after a change returns: a new reader finds the change."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the writer: mkdir one cgroup per step, say so, and wait to be killed
        try:
            os.close(read_end)
            store = Store.open(tmp_path)
            system = System(on_change=store.apply)
            store.bind(system)
            for i in range(50):
                system.mkdir(f"/c{i}")
                system.write_max(f"/c{i}", str(i))
                os.write(write_end, b"x")
            signal.pause()
        finally:
            os._exit(1)
    os.close(write_end)
    seen = 0
    with os.fdopen(read_end, "rb", buffering=0) as pipe:
        while seen < 50:
            chunk = pipe.read(50 - seen)
            assert chunk, "the writer died"
            seen += len(chunk)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    store = Store.open(tmp_path)  # the database with the journal the writer left
    snap = store.load()
    store.close()
    rows = {c["name"]: c["limit"] for c in snap["cgroups"] if c["parent"] is not None}
    assert rows == {f"c{i}": i for i in range(50)}


def test_a_release_agent_of_any_bytes_survives_a_restart(tmp_path):
    """``release_agent`` keeps any byte but NUL, as text with surrogateescape: the journal
    (marshal) and the database (JSON in ``meta``) both give back exactly those bytes."""
    written = b"\xa0/opt/\xff\xfe caf\xc3\xa9 \xed\xa0\x80\xa0\n"
    kept = b"/opt/\xff\xfe caf\xc3\xa9 \xed\xa0\x80"

    def restored() -> bytes:
        reader = Store.open(tmp_path)
        try:
            snap = reader.load()
        finally:
            reader.close()
        again = System()
        load(snap, again.core)
        return again.cgroups.release_agent.encode("utf-8", "surrogateescape")

    store = Store.open(tmp_path, fold_interval=3600)  # nothing folded before close
    system = System(on_change=store.apply)
    store.bind(system)
    system.write_release_agent(written)
    assert store.error is None
    assert list(tmp_path.glob("state.journal.*"))
    assert restored() == kept  # from the journal, as after kill -9
    store.close()  # folds the journal into the database and removes it
    assert not list(tmp_path.glob("state.journal.*"))
    assert restored() == kept  # from the database alone


def _owner_with_ids(system, path, pid, n):
    """Process ``pid`` in ``path`` (limit 10) owning an MM set with ``n`` IOASIDs, reported as
    the user API would (the new IDs)."""
    system.processes.live[pid] = float(pid)
    if path != "/":
        system.mkdir(path)
        system.write_max(path, "10")
    proc = system.write_procs(path, str(pid), writer_pid=1, writer_uid=0)
    with system.lock:
        s = system.core.set_alloc(proc.mm, 5, IoasidSetType.MM)
        ids = [system.core.alloc(s, 1, 100, task=proc) for _ in range(n)]
        system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(proc,)))
    return proc, s, ids


def test_reclaim_by_another_process_uncharges_the_charged_cgroup(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    _, s, ids = _owner_with_ids(system, "/a", 5, 2)
    other, _, _ = _owner_with_ids(system, "/b", 6, 0)
    with system.lock:
        system.core.free(s, ids[0], task=other)
        system.on_change(Change(ChangeKind.IOASID, ids=[ids[0]], processes=(other,)))
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    store.close()


def test_a_set_reported_whole_writes_ids_never_reported(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    proc, s, _ = _owner_with_ids(system, "/a", 5, 1)
    with system.lock:
        system.core.alloc(s, 1, 100, task=proc)
        system.core.alloc(s, 1, 100, task=proc)
        system.on_change(Change(ChangeKind.SET, sets=(s.id,)))
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    assert store.fold()  # the database itself, as other tools read it
    assert store.db.execute("SELECT count(*) FROM ioasids").fetchone()[0] == 3
    store.close()


def test_rmdir_drops_the_row_of_an_uncharged_cgroup(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.mkdir("/a")
    system.mkdir("/b")
    system.rmdir("/a")
    assert store.fold()  # the database itself, as other tools read it
    names = [r[0] for r in store.db.execute("SELECT name FROM cgroups WHERE parent IS NOT NULL")]
    assert names == ["b"]
    store.close()


def test_pid_reuse_writes_the_counters_of_the_old_process_cgroup(tmp_path):
    """With charges that stay and uncharging the reclaiming task's cgroup, an unnoticed exit
    (the pid tracked anew) uncharges the cgroup the old process was in, which neither its
    IOASIDs nor the new process name."""
    store = Store.open(tmp_path)
    system = System(profile("fixed", migration="stay", uncharge_target="current"),
                    processes=FakeProcesses(), on_change=store.apply)
    store.bind(system)

    def close_dev_ioasid(proc):  # what the user API does when a process exits
        s = system.core.find_mm_set_locked(proc)
        if s is not None:
            system.core.free_all_in_set(s, task=proc)

    system.cgroups.exit_hooks.append(close_dev_ioasid)
    _owner_with_ids(system, "/a", 5, 2)
    system.mkdir("/b")
    system.write_max("/b", "10")
    system.write_procs("/b", "5", writer_pid=1, writer_uid=0)  # charges stay in /a
    system.processes.live[5] = 99.0  # pid 5 exited unnoticed and was reused
    system.write_procs("/", "5", writer_pid=1, writer_uid=0)
    assert system.cgroups.lookup("/b").counter == -2  # the series' rule: /b pays, /a keeps 2
    reread = System(system.knobs, processes=FakeProcesses())
    store2 = Store.open(tmp_path)
    load(store2.load(), reread.core)
    store2.close()
    assert dump(reread.core) == dump(system.core)
    store.close()


def test_an_owner_tracked_without_a_report_is_saved_with_its_set(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.processes.live[8] = 4.0
    proc = system.process(8)  # the user API's open: tracked in the root, nothing reported
    with system.lock:
        s = system.core.set_alloc(proc.mm, 3, IoasidSetType.MM)
        ioasid = system.core.alloc(s, 1, 10, task=proc)
        system.on_change(Change(ChangeKind.IOASID, ids=[ioasid]))
    assert stored_dump(make_system, tmp_path) == dump(system.core)
    store.close()


def test_a_late_report_naming_a_removed_cgroup_writes_no_row(make_system, tmp_path):
    store, system = bound(make_system, tmp_path)
    system.processes.live[8] = 4.0
    system.mkdir("/a")
    proc = system.write_procs("/a", "8", writer_pid=1, writer_uid=0)
    system.exit(8)
    system.rmdir("/a")
    with system.lock:
        system.on_change(Change(ChangeKind.REFUSED, processes=(proc,)))
    assert store.fold()  # the database itself, as other tools read it
    assert store.db.execute("SELECT count(*) FROM cgroups").fetchone()[0] == 1
    store.close()


def test_orphans_survive_a_restart_and_a_full_rewrite(tmp_path):
    """Processes of unknown origin stay so across a restart (else restarting the daemon would
    launder them into the root), through the journal and through a full rewrite."""
    system = System(on_change=lambda change: store.apply(change))
    store = Store.open(tmp_path)
    store.bind(system)
    me = system.processes.facts(os.getpid())
    system.note_orphans({os.getpid(): me.start_time, 2**22 + 7: 1.0})  # the second is no one
    assert system.orphans == {os.getpid(): me.start_time}
    store.close()
    store = Store.open(tmp_path)
    store.load()
    assert store.orphans == {os.getpid(): me.start_time}
    store.close()
    store = Store.open(tmp_path)
    store.load()
    store.bind(System())
    store.system.orphans = {os.getpid(): me.start_time}
    store.write_all()
    store.close()
    store = Store.open(tmp_path)
    store.load()
    assert store.orphans == {os.getpid(): me.start_time}
    store.close()


def test_a_v2_hierarchy_survives_a_restart_with_its_walks(make_system, tmp_path):
    def make_v2(**kwargs):
        return make_system(hierarchy="v2", **kwargs)

    store, system = bound(make_v2, tmp_path)
    system.write_subtree_control("/", "+ioasids")
    system.mkdir("/a")
    system.write_max("/a", "10")
    system.write_hierarchy_limit("/a", "cgroup.max.descendants", "4")
    system.mkdir("/a/b")
    system.processes.live[5] = 5.0
    proc = system.write_procs("/a/b", "5", writer_pid=1, writer_uid=0)
    with system.lock:  # b has no ioasids: a is charged
        s = system.core.set_alloc(proc.mm, 5, IoasidSetType.MM)
        ids = [system.core.alloc(s, 1, 100, task=proc) for _ in range(3)]
        system.on_change(Change(ChangeKind.IOASID, ids=ids, processes=(proc,)))
    system.write_subtree_control("/a", "+ioasids")  # the charges move into b
    system.mkdir("/t")
    system.mkdir("/t/x")
    system.write_cgroup_type("/t/x", "threaded")
    assert stored_dump(make_v2, tmp_path) == dump(system.core)
    store.close()

    again = Store.open(tmp_path)
    snap = again.load()
    copy = make_v2()
    load(snap, copy.core)
    a, b = copy.cgroups.lookup("/a"), copy.cgroups.lookup("/a/b")
    t = copy.cgroups.lookup("/t")
    assert b.chain == (b, a) and copy.cgroups.lookup("/t/x").chain == (t,)
    assert (a.counter, b.counter, a.max_descendants) == (3, 3, 4)
    assert copy.cgroups.lookup("/t/x").threaded
    with copy.lock:
        owner = copy.cgroups.process(5)
        restored = copy.core.sets_by_id[s.id]
        for ioasid in ids:
            copy.core.free(restored, ioasid, task=owner)
    assert (a.counter, b.counter) == (0, 0)  # uncharged along the restored walk
    again.close()
    with pytest.raises(Exception, match="cgroup-v2 state"):
        load(snap, make_system().core)


def test_a_schema_1_database_is_upgraded_in_place(tmp_path):
    import json
    import sqlite3

    store, system = bound(lambda **kw: System(**kw), tmp_path)
    system.mkdir("/a")
    store.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("CREATE TABLE old AS SELECT id, parent, name, lim, reserved, counter, peak, "
               "events, events_local, notify_on_release, clone_children, removed, attrs "
               "FROM cgroups")
    db.execute("DROP TABLE cgroups")
    db.execute("ALTER TABLE old RENAME TO cgroups")
    db.execute("UPDATE meta SET value='1' WHERE key='schema'")
    db.commit()
    db.close()
    reopened = Store.open(tmp_path)
    snap = reopened.load()
    assert [c["name"] for c in snap["cgroups"]] == ["", "a"]
    assert snap["cgroups"][1]["control"] is None
    row = reopened.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    assert json.loads(row[0]) == 2
    reopened.close()


def test_the_unused_index_of_older_databases_is_dropped_and_nothing_else(tmp_path):
    """Older versions indexed IOASID rows by cgroup, which no query reads: opening their
    database drops that index (it only slowed every write) and keeps the others."""
    import sqlite3

    store, system = bound(lambda **kw: System(**kw), tmp_path)
    system.mkdir("/a")
    store.close()
    db = sqlite3.connect(tmp_path / "state.sqlite")
    db.execute("CREATE INDEX ioasids_cgroup ON ioasids (cgroup)")
    db.commit()
    db.close()
    reopened = Store.open(tmp_path)
    indexes = {name for (name,) in reopened.db.execute(
        "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='ioasids'")}
    assert indexes == {"ioasids_set"}
    assert [c["name"] for c in reopened.load()["cgroups"]] == ["", "a"]
    reopened.close()


def test_a_v2_freeze_request_survives_a_restart(make_system, tmp_path):
    def make_v2(**kwargs):
        return make_system(hierarchy="v2", **kwargs)

    store, system = bound(make_v2, tmp_path)
    system.mkdir("/a")
    system.mkdir("/a/b")
    system.write_freeze("/a", "1")
    assert stored_dump(make_v2, tmp_path) == dump(system.core)
    system.write_freeze("/a/b", "1")
    system.write_freeze("/a", "0")
    store.close()
    copy = make_v2()
    again = Store.open(tmp_path)
    load(again.load(), copy.core)
    again.close()
    a, b = copy.cgroups.lookup("/a"), copy.cgroups.lookup("/a/b")
    assert (a.freeze, b.freeze) == (False, True)
    assert (a.frozen_ns, a.frozen_since) == (system.cgroups.lookup("/a").frozen_ns, None)
    assert b.frozen_since == system.cgroups.lookup("/a/b").frozen_since is not None
