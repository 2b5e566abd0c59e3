"""The kernel's page cache over the mount: an unchanged file is read without reaching the
server, and after any change (an allocation, a limit write, an exit, a move) every reader, in
any process, through a new or an already open file, reads the new value; only files read since
their last invalidation are invalidated, and with none held a change costs nothing more."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Changes

from cgroupfs import files
from cgroupfs.mount import CgroupMount
from ioasidsd.model import ioasid_uapi as uapi
from ioasidsd.model.ioasid_device import IoasidFile
from ioasidsd.system import System


@pytest.fixture
def handle(needs_fuse: None, system: System, mountdir: Path) -> Iterator[CgroupMount]:
    from cgroupfs import mount

    with mount(system, str(mountdir)) as mounted:
        yield mounted


def cat(path: Path) -> str:
    """The file as another process reads it."""
    return subprocess.run(["cat", str(path)], capture_output=True, text=True,
                          check=True).stdout


def pread0(fd: int) -> str:
    """The file read again from the start through a file kept open."""
    return os.pread(fd, 4096, 0).decode()


def alloc(system: System, file: IoasidFile) -> int:
    arg = uapi.ALLOC_REQUEST.pack(16, 0, 1, 1000)
    return system.ioasid_ioctl(file, uapi.IOASID_REQUEST_ALLOC, arg)[0]


class Readers:
    """One file read three ways: by ``cat``, by a new open in this process, and through a
    file opened once and kept open (``pread`` at 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def all(self) -> set[str]:
        return {cat(self.path), self.path.read_text(), pread0(self.fd)}

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def readers() -> Iterator[Callable[[Path], Readers]]:
    made: list[Readers] = []

    def make(path: Path) -> Readers:
        made.append(Readers(path))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files the server rendered, in order (reads and sizes)."""
    seen: list[str] = []
    real = files.read

    def counting(system: System, cg, file) -> bytes:  # type: ignore[no-untyped-def]
        seen.append(file.name)
        return real(system, cg, file)

    monkeypatch.setattr(files, "read", counting)
    return seen


def test_an_unchanged_file_is_read_from_the_page_cache(handle: CgroupMount, system: System,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    mnt = Path(handle.mountpoint)
    served: list[str | None] = []
    real = handle.operations.read

    def read(path: str | None, size: int, offset: int, fi: object) -> bytes:
        served.append(path)
        return real(path, size, offset, fi)

    monkeypatch.setattr(handle.operations, "read", read)
    published = handle.operations.cache.published

    def reached() -> list[str | None]:
        """The reads that reached the server: Python's, and those the C ``read`` answered
        from what the server published (the write published this file: the only one read)."""
        in_c = published.reads_served if published is not None else 0
        return served + ["/a/ioasids.max"] * in_c

    (mnt / "a").mkdir()
    (mnt / "a" / "ioasids.max").write_text("7")
    assert (mnt / "a" / "ioasids.max").read_text() == "7\n"
    # with the C parts, the open pushed the published text into the page cache: no read
    # reached the server; without them, the first read did
    from cgroupfs.fastopen import cached_walks

    pushes = published is not None and cached_walks()
    first = [] if pushes else ["/a/ioasids.max"]
    assert reached() == first
    assert cat(mnt / "a" / "ioasids.max") == "7\n"
    for _ in range(20):
        assert (mnt / "a" / "ioasids.max").read_text() == "7\n"
        assert cat(mnt / "a" / "ioasids.max") == "7\n"
    assert reached() == first  # 41 reads, from the page cache
    if pushes:
        assert published.texts_pushed == 1
    assert os.stat(mnt / "a" / "ioasids.max").st_size == 2


def test_the_process_lists_are_never_cached(handle: CgroupMount, system: System, spawn,
                                            renders: list[str]) -> None:
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    (mnt / "a" / "cgroup.procs").write_text(str(spawn().pid))
    for _ in range(3):
        assert len((mnt / "a" / "cgroup.procs").read_text().split()) == 1
    assert renders.count("cgroup.procs") == 3  # each read rendered afresh


def test_a_limit_write_is_seen_by_every_reader(handle: CgroupMount, system: System,
                                               readers) -> None:
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    limit = readers(mnt / "a" / "ioasids.max")
    assert limit.all() == {"0\n"}
    # through the mount, by another process
    subprocess.run(["sh", "-c", f"echo 12345 > {mnt}/a/ioasids.max"], check=True)
    assert limit.all() == {"12345\n"}
    # through another face
    system.write_max("a", "max")
    assert limit.all() == {"max\n"}
    assert os.stat(mnt / "a" / "ioasids.max").st_size == 4
    system.write_max("a", "3")
    assert limit.all() == {"3\n"}


def test_allocation_exit_and_move_are_seen_by_every_reader(handle: CgroupMount, system: System,
                                                           spawn, readers) -> None:
    mnt = Path(handle.mountpoint)
    for name in ("a", "a/b", "c"):
        (mnt / name).mkdir()
        (mnt / name / "ioasids.max").write_text("max")
    child = spawn()
    (mnt / "a" / "b" / "cgroup.procs").write_text(str(child.pid))
    b = readers(mnt / "a" / "b" / "ioasids.current")
    a = readers(mnt / "a" / "ioasids.current")
    c = readers(mnt / "c" / "ioasids.current")
    peak = readers(mnt / "a" / "b" / "ioasids.peak")
    in_use = readers(mnt / "ioasids.current")
    assert b.all() == a.all() == c.all() == peak.all() == in_use.all() == {"0\n"}

    file = system.ioasid_open(child.pid)
    for _ in range(10):
        alloc(system, file)  # an allocation
    assert b.all() == a.all() == peak.all() == in_use.all() == {"10\n"}  # ancestors and root

    system.write_procs("c", str(child.pid), writer_pid=child.pid, writer_uid=0)  # a move
    assert b.all() == a.all() == {"0\n"}
    assert c.all() == {"10\n"}
    assert peak.all() == {"10\n"}

    system.ioasid_release(file, exited=True)  # an exit
    assert c.all() == in_use.all() == {"0\n"}


def test_a_refused_charge_is_seen_in_the_events(handle: CgroupMount, system: System, spawn,
                                                readers) -> None:
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    (mnt / "a" / "ioasids.max").write_text("1")
    child = spawn()
    (mnt / "a" / "cgroup.procs").write_text(str(child.pid))
    events = readers(mnt / "a" / "ioasids.events")
    (before,) = events.all()
    file = system.ioasid_open(child.pid)
    alloc(system, file)
    with pytest.raises(OSError):
        alloc(system, file)  # refused by the limit: the events counter moves
    (after,) = events.all()
    assert after != before and after.split()[-1] == "1"


def test_only_files_read_since_their_last_invalidation_are_invalidated(
        handle: CgroupMount, system: System, changes: Changes) -> None:
    mnt = Path(handle.mountpoint)
    cache = handle.operations.cache
    (mnt / "a").mkdir()
    (mnt / "b").mkdir()
    base = cache.invalidations
    system.write_max("b", "5")  # nothing of b was read
    (mnt / "a" / "ioasids.max").read_text()
    assert cache.held() >= 1
    done = cache.invalidations
    system.write_max("b", "6")  # b's files are not held: what of the root is, is
    root_held = cache.invalidations - done
    system.write_max("a", "5")
    assert cache.invalidations > done + root_held  # a's limit was held
    after = cache.invalidations
    system.write_max("a", "6")  # not read since: nothing to tell the kernel
    assert cache.invalidations == after
    assert base <= done


def test_with_nothing_held_a_change_costs_nothing_more(handle: CgroupMount, system: System,
                                                       changes: Changes) -> None:
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    (mnt / "a" / "ioasids.max").read_text()
    assert system.on_change is not changes  # something is held: changes are followed
    system.write_max("a", "5")  # a's and the root's files; their directories stay held
    assert handle.operations.cache.held() >= 1
    system.set_attrs("a", {"": {"mode": 0o750}})  # a directory's attributes: all along a
    assert handle.operations.cache.held() == 0
    assert system.on_change is changes  # the feed goes to its consumer alone again
    before = len(changes.seen)
    system.write_max("a", "6")
    assert len(changes.seen) == before + 1  # the store still sees every change


def test_readers_and_writers_together_neither_block_nor_see_stale_values(
        handle: CgroupMount, system: System) -> None:
    """Writers through the mount and through another face while readers keep reading the same
    files: every operation finishes (an invalidation waits for reads in flight, which never wait
    for it), and once the writers are done every reader reads the last value."""
    mnt = Path(handle.mountpoint)
    for name in ("a", "c"):
        (mnt / name).mkdir()
    paths = [mnt / "a" / "ioasids.max", mnt / "c" / "ioasids.max", mnt / "ioasids.capacity"]
    script = (
        "import sys\n"
        "for i in range(150):\n"
        "    for p in sys.argv[1:]:\n"
        "        open(p).read()\n"
    )
    readers_ = [subprocess.Popen([sys.executable, "-c", script, *map(str, paths)])
                for _ in range(3)]
    writer = subprocess.Popen(["sh", "-c", f"for i in $(seq 1 150); do echo $i > {paths[0]}; "
                               "done"])
    for i in range(150):
        system.write_max("c", str(i))
        paths[1].read_text()
    assert writer.wait(60) == 0
    assert all(r.wait(60) == 0 for r in readers_)
    assert cat(paths[0]) == paths[0].read_text() == "150\n"
    assert cat(paths[1]) == "149\n"


def test_opens_cost_no_python_call_with_the_c_open(handle: CgroupMount, system: System,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from cgroupfs import fastopen

    if not fastopen.LIBRARY.exists():
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev)")
    assert handle.fast_open
    opened: list[str] = []
    real = handle.operations.open
    monkeypatch.setattr(handle.operations, "open",
                        lambda path, fi: opened.append(path) or real(path, fi))
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    for _ in range(5):
        assert (mnt / "a" / "ioasids.current").read_text() == "0\n"
        assert cat(mnt / "a" / "ioasids.max") == "0\n"
    (mnt / "a" / "ioasids.max").write_text("9")
    assert cat(mnt / "a" / "ioasids.max") == "9\n"
    assert opened == []


def test_directory_attributes_another_face_changes_are_seen(handle: CgroupMount,
                                                            system: System) -> None:
    """Attributes are cached for long: a change of mode or link count made by another face
    (the control API, the daemon) reaches ``stat`` at once."""
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    assert os.stat(mnt / "a").st_nlink == 2
    assert os.stat(mnt / "a" / "ioasids.max").st_mode & 0o777 == 0o644
    system.mkdir("a/b")
    assert os.stat(mnt / "a").st_nlink == 3
    system.set_attrs("a", {"": {"mode": 0o700}, "ioasids.max": {"mode": 0o600}})
    assert os.stat(mnt / "a").st_mode & 0o777 == 0o700
    assert os.stat(mnt / "a" / "ioasids.max").st_mode & 0o777 == 0o600
    stat_out = subprocess.run(["stat", "-c", "%a", str(mnt / "a")], capture_output=True,
                              text=True, check=True).stdout
    assert stat_out == "700\n"


@pytest.fixture
def published(handle: CgroupMount):  # type: ignore[no-untyped-def]
    """The table the C ``getattr`` and ``read`` answer from (skipped without the C parts)."""
    table = handle.operations.cache.published
    if table is None:
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev)")
    return table


def _kernel_forgets(handle: CgroupMount, path: str) -> None:
    """Make the kernel drop what it holds of ``path`` (its page and attributes) without any
    change in the model, so that its next stat and read reach the server."""
    handle.operations.cache.invalidate([path])


def test_what_the_server_told_is_answered_again_in_c(handle: CgroupMount, system: System,
                                                     published,  # type: ignore[no-untyped-def]
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the server has rendered a file's attributes and text, the kernel's next getattr
    and read of it (here after the kernel dropped them unasked) are answered by the C handlers
    with the same values, with no Python call."""
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    system.write_max("a", "12345")
    first = os.stat(mnt / "a" / "ioasids.max")
    assert (mnt / "a" / "ioasids.max").read_text() == "12345\n"
    python: list[str] = []
    for name in ("getattr", "read"):
        real = getattr(handle.operations, name)
        monkeypatch.setattr(handle.operations, name,
                            lambda *a, _real=real, _name=name: python.append(_name) or _real(*a))
    getattrs, reads = published.getattrs_served, published.reads_served
    _kernel_forgets(handle, "/a/ioasids.max")
    again = os.stat(mnt / "a" / "ioasids.max")
    assert (again.st_size, again.st_mode, again.st_mtime_ns) == (6, first.st_mode,
                                                                  first.st_mtime_ns)
    assert cat(mnt / "a" / "ioasids.max") == "12345\n"
    assert published.getattrs_served > getattrs and published.reads_served > reads
    assert python == []


def test_a_change_forgets_what_was_published_before_it_returns(
        handle: CgroupMount, system: System, published,  # type: ignore[no-untyped-def]
        readers) -> None:
    """What the C handlers answer is never older than the last change: a change by another
    face forgets the files it may alter (the next read renders afresh), a rename forgets
    everything (every path below the renamed cgroup changed)."""
    mnt = Path(handle.mountpoint)
    for name in ("a", "a/b"):
        (mnt / name).mkdir()
    system.write_max("a", "max")
    limit = readers(mnt / "a" / "b" / "ioasids.max")
    assert limit.all() == {"0\n"}
    held = len(published)
    assert held >= 3  # a, a/b and the limit at least
    system.write_max("a/b", "42")
    assert len(published) < held
    _kernel_forgets(handle, "/a/b/ioasids.max")  # even a kernel that kept the page asks again
    assert limit.all() == {"42\n"}
    system.rename("a", "z")
    assert len(published) == 0
    assert (mnt / "z" / "b" / "ioasids.max").read_text() == "42\n"
    system.rmdir("z/b")
    assert "b" not in os.listdir(mnt / "z")
    with pytest.raises(FileNotFoundError):
        (mnt / "z" / "b" / "ioasids.max").read_text()


def test_a_value_rendered_before_a_change_is_never_published(
        handle: CgroupMount, system: System, published) -> None:  # type: ignore[no-untyped-def]
    """The race a ticket closes: a handler notes a file, renders it, and a change lands before
    it publishes; the stale rendering is dropped, not published."""
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    cache = handle.operations.cache
    cg = system.cgroups.lookup("a")
    stat = handle.operations.getattr("/a/ioasids.max")
    ticket = cache.note(cg, "ioasids.max")
    system.write_max("a", "7")  # lands between the rendering and the publication
    before = len(published)
    cache.publish(cg, "ioasids.max", ticket, {**stat, "st_size": 2}, b"0\n")
    assert len(published) == before
    fresh = cache.note(cg, "ioasids.max")  # no change since: published
    cache.publish(cg, "ioasids.max", fresh, {**stat, "st_size": 2}, b"7\n")
    assert len(published) == before + 1
    _kernel_forgets(handle, "/a/ioasids.max")
    assert (mnt / "a" / "ioasids.max").read_text() == "7\n"


def test_a_worker_keeps_its_python_thread_state(handle: CgroupMount, published,  # type: ignore[no-untyped-def]
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """libfuse's workers are threads Python does not know: each keeps one thread state across
    the Python calls it makes (made once by the C handlers), instead of one made and deleted
    per call. A context variable a call leaves set is what the next call on that thread sees."""
    import contextvars
    import threading

    mark: contextvars.ContextVar[int | None] = contextvars.ContextVar("mark", default=None)
    seen: list[tuple[int, int | None]] = []
    real = handle.operations.getattr

    def getattr_(path: str, fh: object = None) -> dict[str, int]:
        seen.append((threading.get_native_id(), mark.get()))
        mark.set(threading.get_native_id())
        return real(path, fh)

    monkeypatch.setattr(handle.operations, "getattr", getattr_)
    for _ in range(50):  # a missing name is never cached: each lookup reaches Python
        assert not (Path(handle.mountpoint) / "missing").exists()
    assert len(seen) >= 50
    assert any(left == thread for thread, left in seen)


def _write(path: Path, data: bytes) -> None:
    """``echo``'s write: open with ``O_TRUNC``, one write(2), close."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def test_a_write_of_the_current_text_is_answered_in_c(
        handle: CgroupMount, system: System, changes: Changes,
        published,  # type: ignore[no-untyped-def]
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of exactly the text a file has, to a file a rewrite leaves unchanged, costs no
    Python call and changes nothing; a write of another value, or of the same value spelt
    otherwise, reaches the model, is seen by every reader, and keeps its errnos."""
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    limit = mnt / "a" / "ioasids.max"
    _write(limit, b"5\n")
    assert cat(limit) == "5\n"  # what the write published
    calls: list[bytes] = []
    real = handle.operations.write_from
    monkeypatch.setattr(handle.operations, "write_from",
                        lambda path, data, fh, pid: calls.append(data) or real(path, data, fh,
                                                                               pid))
    before, served = len(changes.seen), published.writes_served
    pushed, reads = published.texts_pushed, published.reads_served
    for _ in range(3):
        _write(limit, b"5\n")
        assert cat(limit) == "5\n"
    assert calls == [] and published.writes_served == served + 3
    # the kernel drops a page written directly: each open pushed the text again, and no
    # read reached the server (a kernel that cannot resolve from its caches only: no push)
    from cgroupfs.fastopen import cached_walks

    if cached_walks():
        assert published.texts_pushed == pushed + 3 and published.reads_served == reads
    assert len(changes.seen) == before
    _write(limit, b"5")  # the same value, other bytes: the model's parser judges it
    assert calls == [b"5"] and len(changes.seen) == before
    _write(limit, b"6\n")
    assert cat(limit) == "6\n" and system.cgroups.lookup("a").limit == 6
    assert len(changes.seen) == before + 1
    with pytest.raises(OSError) as caught:
        _write(limit, b"junk\n")
    assert caught.value.errno == errno.EINVAL
    assert calls == [b"5", b"6\n", b"junk\n"]
    flag = mnt / "a" / "notify_on_release"
    assert cat(flag) == "0\n"
    _write(flag, b"0\n")
    assert calls[-1] == b"junk\n"
    _write(flag, b"1\n")
    assert calls[-1] == b"1\n" and cat(flag) == "1\n"


def test_a_rewrite_the_profile_refuses_still_reaches_the_model(
        needs_fuse: None, mountdir: Path) -> None:
    """In the ``v4`` profile writing the current limit again is ``EINVAL``: the C write does
    not answer it."""
    from cgroupfs import mount
    from ioasidsd.model.knobs import profile

    system = System(profile("v4"))
    assert "ioasids.max" not in files.unchanged_by_rewrite(system)
    with mount(system, str(mountdir)) as mounted:
        limit = Path(mounted.mountpoint) / "a" / "ioasids.max"
        limit.parent.mkdir()
        _write(limit, b"5\n")
        assert cat(limit) == "5\n"
        with pytest.raises(OSError) as caught:
            _write(limit, b"5\n")
        assert caught.value.errno == errno.EINVAL


def test_a_mount_is_unregistered_before_libfuse_frees_it(
        needs_fuse: None, system: System, mountdir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The C handlers forget a mount's ``struct fuse`` when its loop ends, before libfuse
    frees it (by the time ``fastopen_main`` returns), whoever unmounts: a later mount at the
    same address is never served another mount's handlers, and never loses its own when the
    earlier mount's thread ends."""
    from cgroupfs import fastopen, mount

    at_return: list[bool] = []
    real_forget = fastopen.Serving.forget

    def forget(self: fastopen.Serving) -> None:  # right after fastopen_main returned
        at_return.append(self.registered)
        real_forget(self)

    monkeypatch.setattr(fastopen.Serving, "forget", forget)
    mounted = mount(system, str(mountdir))
    serving = mounted.serving
    if serving is None:
        mounted.unmount()
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev)")
    assert serving.registered
    subprocess.run(["umount", str(mountdir)], check=True)  # from outside
    mounted.wait()
    assert at_return == [False]
    assert not serving.registered


def test_a_freed_table_ignores_late_callers(needs_fuse: None) -> None:
    """Publishing, forgetting and counting race with freeing the table (a change on another
    face while the mount ends): after ``free`` each does nothing, and none uses freed
    memory."""
    import threading

    from cgroupfs import fastopen

    lib = fastopen.library()
    if lib is None:
        pytest.skip("cgroupfs/_fastopen.so not built")
    stat = dict.fromkeys(("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime",
                          "st_mtime", "st_ctime"), 1)
    for _ in range(20):
        table = fastopen.Table(lib)
        stop = threading.Event()

        def churn(table: fastopen.Table = table, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                table.publish("/a/ioasids.max", stat, b"5\n")
                table.forget(["/a/ioasids.max", "/b"])
                len(table)

        threads = [threading.Thread(target=churn) for _ in range(3)]
        for t in threads:
            t.start()
        table.free()
        stop.set()
        for t in threads:
            t.join()
        table.publish("/a", stat, None)
        assert len(table) == 0 and table.writes_served == 0


def test_a_file_noted_as_the_mount_detaches_is_not_held(handle: CgroupMount,
                                                        system: System) -> None:
    """A handler that notes a file while the mount detaches (the unmount stops
    invalidating while libfuse's workers still serve) holds nothing afterwards: nothing is
    kept, and no change after it queues invalidations nobody will send."""
    import threading

    cache = handle.operations.cache
    (Path(handle.mountpoint) / "a").mkdir()
    cg = system.cgroups.lookup("a")
    real = cache._lock  # the note passed its first check; the detach lands now

    class DetachFirst:
        def __init__(self) -> None:
            self.once = True

        def __enter__(self) -> None:
            if self.once and threading.current_thread() is threading.main_thread():
                self.once = False
                detaching = threading.Thread(target=cache.detach)
                detaching.start()
                detaching.join()
            real.acquire()

        def __exit__(self, *exc: object) -> None:
            real.release()

    cache._lock = DetachFirst()  # type: ignore[assignment]
    try:
        assert cache.note(cg, "ioasids.max") is None
    finally:
        cache._lock = real
    assert not cache.attached and cache.held() == 0
    system.write_max("a", "3")
    assert cache.held() == 0


def test_a_rewrite_after_another_faces_change_reaches_the_model(
        handle: CgroupMount, system: System, published) -> None:  # type: ignore[no-untyped-def]
    """The C write compares with what is published now: once another face changed the limit
    (which forgets the published text), writing the old text again is a change, made by the
    model, and read back by every reader."""
    mnt = Path(handle.mountpoint)
    (mnt / "a").mkdir()
    limit = mnt / "a" / "ioasids.max"
    _write(limit, b"5\n")
    assert cat(limit) == "5\n"
    served = published.writes_served
    system.write_max("a", "6")
    _write(limit, b"5\n")
    assert published.writes_served == served
    assert system.cgroups.lookup("a").limit == 5
    assert cat(limit) == limit.read_text() == "5\n"
    _write(limit, b"5\n")  # published again by that write: answered in C
    assert published.writes_served == served + 1


# ---------------------------------------------------------------------- directory entries
def _knows(path: Path) -> bool:
    """Whether the kernel holds an entry for ``path`` (asking the server nothing)."""
    from cgroupfs.fastopen import kernel_inode

    return kernel_inode(str(path)) is not None


def test_entries_are_kept_past_libfuses_second(handle: CgroupMount) -> None:
    from cgroupfs.kernelcache import ENTRY_TIMEOUT

    if not handle.operations.kernel_cache:
        pytest.skip("cgroupfs/_fastopen.so not built: the mount keeps entries for 1 s")
    assert handle._options["entry_timeout"] == ENTRY_TIMEOUT > 1.0


def test_a_cgroup_another_face_removes_leaves_the_kernel_at_once(handle: CgroupMount,
                                                                  system: System) -> None:
    """The kernel keeps entries for long: one the tree loses by another face (the daemon,
    a slice stopped) is dropped before that face's call returns, and can be made again."""
    mnt = Path(handle.mountpoint)
    (mnt / "a" / "b").mkdir(parents=True)
    assert (mnt / "a" / "b" / "ioasids.max").read_text() == "0\n"
    assert _knows(mnt / "a" / "b") and _knows(mnt / "a" / "b" / "ioasids.max")
    cache = handle.operations.cache
    before = cache.entry_invalidations
    system.rmdir("/a/b")
    assert cache.entry_invalidations == before + 1
    assert not _knows(mnt / "a" / "b")
    assert not (mnt / "a" / "b").exists()
    system.mkdir("/a/b")
    assert (mnt / "a" / "b" / "ioasids.max").read_text() == "0\n"


def test_a_cgroup_another_face_renames_is_gone_from_its_old_name(handle: CgroupMount,
                                                                 system: System) -> None:
    mnt = Path(handle.mountpoint)
    (mnt / "b").mkdir()
    assert _knows(mnt / "b")
    system.write_max("/b", "7")
    system.rename("/b", "/c")
    assert not _knows(mnt / "b")
    assert (mnt / "c" / "ioasids.max").read_text() == "7\n"
    assert sorted(p.name for p in mnt.iterdir() if p.is_dir()) == ["c"]


def test_the_kernels_own_rmdir_and_rename_are_not_notified(handle: CgroupMount) -> None:
    """The kernel updates the entry of its own rmdir or rename (a notification then would wait
    for ever on the directory's lock, held by the request being served)."""
    mnt = Path(handle.mountpoint)
    (mnt / "a" / "b").mkdir(parents=True)
    (mnt / "a" / "x").mkdir()
    cache = handle.operations.cache
    before = cache.entry_invalidations
    (mnt / "a" / "b").rename(mnt / "a" / "c")
    (mnt / "a" / "x").rmdir()
    assert cache.entry_invalidations == before
    assert not _knows(mnt / "a" / "b") and not _knows(mnt / "a" / "x")
    assert (mnt / "a" / "c").is_dir()


def test_files_a_subtree_control_write_takes_away_leave_the_kernel(
        needs_fuse: None, mountdir: Path) -> None:
    """v2: disabling the controller in a parent takes its files from the children. Written by
    another face, the kernel's entries of those it knew are dropped; written through the
    mount, they are not (its handler finds no directory it would have to ask the mount for),
    but the kernel asks for the file's attributes before it uses the entry, and finds it gone."""
    from cgroupfs import mount

    system = System(hierarchy="v2")
    with mount(system, str(mountdir)) as handle:
        mnt = Path(handle.mountpoint)
        cache = handle.operations.cache
        (mnt / "cgroup.subtree_control").write_text("+ioasids")
        (mnt / "t").mkdir()
        (mnt / "u").mkdir()
        assert (mnt / "t" / "ioasids.max").read_text() == "0\n"
        (mnt / "cgroup.subtree_control").write_text("-ioasids")
        with pytest.raises(FileNotFoundError):
            os.open(mnt / "t" / "ioasids.max", os.O_RDONLY)
        assert not (mnt / "t" / "ioasids.max").exists()
        assert (mnt / "t" / "cgroup.procs").exists()  # the core files stay
        (mnt / "cgroup.subtree_control").write_text("+ioasids")
        assert (mnt / "t" / "ioasids.max").read_text() == "0\n"
        assert _knows(mnt / "t" / "ioasids.max")
        before = cache.entry_invalidations
        system.write_subtree_control("/", "-ioasids")  # another face
        assert not _knows(mnt / "t" / "ioasids.max")
        assert cache.entry_invalidations == before + 1  # only the file the kernel knew
        with pytest.raises(FileNotFoundError):
            os.open(mnt / "t" / "ioasids.max", os.O_RDONLY)


def test_a_path_on_another_device_is_not_taken_for_the_mounts(tmp_path: Path) -> None:
    """Entries are dropped, and texts pushed, by inode numbers found through paths under the
    mount point: a path that shows another device (something mounted over the mount point) is
    never taken for one of the mount's files."""
    from cgroupfs.fastopen import LIBRARY, kernel_inode

    if not LIBRARY.exists():
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev)")
    here = os.stat(tmp_path)
    assert kernel_inode(str(tmp_path), here.st_dev) == here.st_ino
    assert kernel_inode(str(tmp_path)) == here.st_ino
    other = os.stat("/proc").st_dev
    assert other != here.st_dev
    assert kernel_inode(str(tmp_path), other) is None
    assert kernel_inode(str(tmp_path / "missing"), here.st_dev) is None


def test_inodes_are_found_from_the_kernels_caches_only(handle: CgroupMount, system: System,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding an inode (to drop an entry, or to push a text from the C ``open``) never sends
    the mount a request: a handler waiting on its own mount holds a worker another would need
    to answer it. A name the kernel never looked up is not found, and nothing is asked."""
    from cgroupfs.fastopen import LIBRARY, cached_walks, kernel_inode

    if not LIBRARY.exists():
        pytest.skip("cgroupfs/_fastopen.so not built (scripts/bootstrap needs cc and "
                    "libfuse3-dev)")
    if not cached_walks():
        pytest.skip("this kernel has no openat2 RESOLVE_CACHED (Linux 5.12)")
    mnt = Path(handle.mountpoint)
    asked: list[str] = []
    real = handle.operations.getattr
    monkeypatch.setattr(handle.operations, "getattr",
                        lambda path, fh=None: asked.append(path) or real(path, fh))
    system.mkdir("/x")  # another face: the kernel has no entry for it
    device = handle.operations.cache.device
    assert device is not None
    assert kernel_inode(str(mnt / "x"), device, cached_only=True) is None
    assert asked == []
    ino = os.stat(mnt / "x").st_ino  # looked up now (and the root's attributes asked again)
    assert "/x" in asked
    seen = len(asked)
    assert kernel_inode(str(mnt / "x"), device, cached_only=True) == ino
    assert len(asked) == seen


def test_files_a_threaded_cgroup_loses_leave_the_kernel(needs_fuse: None,
                                                          mountdir: Path) -> None:
    """v2: a cgroup made threaded has no controller files of a domain controller any more;
    the kernel's entries of those it knew are dropped."""
    from cgroupfs import mount

    system = System(hierarchy="v2")
    with mount(system, str(mountdir)) as handle:
        mnt = Path(handle.mountpoint)
        (mnt / "cgroup.subtree_control").write_text("+ioasids")
        (mnt / "t").mkdir()
        assert (mnt / "t" / "ioasids.current").read_text() == "0\n"
        assert _knows(mnt / "t" / "ioasids.current")
        system.write_cgroup_type("/t", "threaded")
        assert not _knows(mnt / "t" / "ioasids.current")
        assert (mnt / "t" / "cgroup.type").read_text() == "threaded\n"
