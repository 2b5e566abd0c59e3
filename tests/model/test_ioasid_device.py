"""The /dev/ioasid device model: open, ioctl, release and exit, in both profiles.

Numbers in ``spec(...)`` marks are the behaviours 82-96 of ``docs/behaviours.md``.
"""

from __future__ import annotations

from errno import (
    EACCES,
    EAGAIN,
    EBADF,
    EBUSY,
    EEXIST,
    EFAULT,
    EINVAL,
    ENODEV,
    ENOENT,
    ENOSPC,
    ENOTTY,
    EPERM,
)

import pytest
from userapi.helpers import MAX31, World

from ioasidsd.model import IoasidError, IoasidNotify, IoasidSetType, IoasidState, NotifierBlock
from ioasidsd.model import ioasid_uapi as uapi


# The device's own worlds (a core, its controller and the device), not the model's ``World`` of
# ``conftest.py``.
@pytest.fixture(params=["fixed", "v4"])
def world(request: pytest.FixtureRequest) -> World:
    """A world in each profile."""
    return World(request.param)


@pytest.fixture
def fixed() -> World:
    return World("fixed")


@pytest.fixture
def v4() -> World:
    return World("v4")


def recorder(log: list, tag: str | None = None) -> NotifierBlock:
    """A notifier block appending ``(tag, event)``, or ``(event, id)`` without a tag."""

    def callback(nb: NotifierBlock, event: IoasidNotify, args) -> int:
        log.append((tag, event) if tag else (event, args.id))
        return 0

    return NotifierBlock(callback)


def errno_of(fn, *args, **kwargs) -> int:
    with pytest.raises(IoasidError) as info:
        fn(*args, **kwargs)
    return info.value.errno


# ---------------------------------------------------------------------------------- open
@pytest.mark.spec(82)
def test_82_open_creates_mm_set_with_quota_zero(world: World) -> None:
    p = world.proc()
    avail = world.core.capacity_avail
    f = world.device.open(p)
    s = world.core.find_mm_set(p.mm)
    assert s is not None and s.type == IoasidSetType.MM and f.user.ioasid_set is s
    if world.core.knobs.profile == "v4":
        assert s.quota == avail and world.core.capacity_avail == 0  # quota 0 takes the rest
    else:
        assert s.quota == 0 and world.core.capacity_avail == avail  # no grab of the pool


@pytest.mark.spec(83)
def test_83_second_open_same_process_ebusy(world: World) -> None:
    p = world.proc()
    world.device.open(p)
    assert errno_of(world.device.open, p) == EBUSY


@pytest.mark.spec(84)
def test_84_open_with_existing_mm_set(world: World) -> None:
    """v4: EEXIST while the process's MM set exists. fixed: the open adopts it, IDs included."""
    p = world.proc()
    s = world.core.set_alloc(p.mm, 0, IoasidSetType.MM)
    held = world.core.alloc(s, 1, 100, task=p)
    if world.core.knobs.user_reopen_eexist:
        assert errno_of(world.device.open, p) == EEXIST
        assert p not in world.device.users
    else:
        f = world.device.open(p)
        assert f.user.ioasid_set is s
        assert world.free(f, held) == 0 and held not in world.core


@pytest.mark.parametrize(("base", "quirk"), [("fixed", True), ("v4", False)])
def test_user_reopen_eexist_knob_alone(base: str, quirk: bool) -> None:
    """``user_reopen_eexist`` switched alone over the other profile."""
    w = World(base, user_reopen_eexist=quirk)
    p = w.proc()
    w.core.set_alloc(p.mm, 0, IoasidSetType.MM)
    if quirk:
        assert errno_of(w.device.open, p) == EEXIST
    else:
        assert w.device.open(p).user.ioasid_set is w.core.find_mm_set(p.mm)


def test_open_adoption_cancels_a_deferred_set_free(fixed: World) -> None:
    """fixed: a release that leaves a referenced ID FREE_PENDING defers the set's free; a
    reopen adopts the set, which then survives the pending ID's final put."""
    p = fixed.proc()
    f = fixed.device.open(p)
    held = fixed.alloc(f)
    fixed.core.get(None, held)  # someone else (an IOMMU) holds a reference
    fixed.device.release(f)
    assert fixed.core.data(held).state == IoasidState.FREE_PENDING
    f2 = fixed.device.open(p)
    fixed.core.put(None, held)
    assert held not in fixed.core
    assert fixed.core.set_valid(f2.user.ioasid_set)
    assert fixed.alloc(f2) == 1


def test_open_by_exited_process_einval(world: World) -> None:
    p = world.proc()
    world.cgroups.exit(p)
    assert errno_of(world.device.open, p) == EINVAL


@pytest.mark.spec(96)
def test_96_second_opener_enospc_with_host_set(world: World) -> None:
    """v4: the VT-d host set holds set index 0 and the first opener swallowed the pool, so a
    second process cannot open. fixed: quota-0 sets do not grab the pool, both open."""
    world.core.set_alloc(None, 0x8000, IoasidSetType.NULL)  # VT-d's host PASID set
    a, b = world.proc(), world.proc()
    fa = world.device.open(a)
    if world.core.knobs.profile == "v4":
        assert errno_of(world.device.open, b) == ENOSPC
        world.device.release(fa)  # the leaked quota stays leaked (quirk 1)
        assert errno_of(world.device.open, b) == ENOSPC
    else:
        fb = world.device.open(b)
        assert world.alloc(fa) == 1 and world.alloc(fb) == 2


# ---------------------------------------------------------------------------------- ioctls
@pytest.mark.spec(85)
def test_85_get_api_version(world: World) -> None:
    f = world.device.open(world.proc())
    assert world.ioctl(f, uapi.IOASID_GET_API_VERSION) == (0, b"")
    assert uapi.IOASID_GET_API_VERSION == 0x6964


@pytest.mark.spec(86)
def test_86_get_info_reports_31_bits(world: World) -> None:
    f = world.device.open(world.proc())
    ret, out = world.ioctl(f, uapi.IOASID_GET_INFO, uapi.INFO.pack(64, 0, 0) + b"\xaa" * 52)
    assert ret == 0 and uapi.INFO.unpack(out) == (64, 0, 31)
    assert uapi.IOASID_GET_INFO == 0x6965


@pytest.mark.spec(87)
@pytest.mark.parametrize(("argsz", "flags"), [(11, 0), (0, 0), (12, 1), (12, 0x80000000)])
def test_87_get_info_argsz_or_flags_einval(world: World, argsz: int, flags: int) -> None:
    f = world.device.open(world.proc())
    arg = uapi.INFO.pack(argsz, flags, 0)
    assert errno_of(world.ioctl, f, uapi.IOASID_GET_INFO, arg) == EINVAL


@pytest.mark.parametrize("cmd", [uapi.IOASID_GET_INFO, uapi.IOASID_REQUEST_ALLOC,
                                 uapi.IOASID_REQUEST_FREE, uapi.IOASID_REQUEST_ALLOC_BATCH,
                                 uapi.IOASID_REQUEST_FREE_BATCH])
def test_short_argument_is_efault(world: World, cmd: int) -> None:
    """The argument is copied in like copy_from_user: too few bytes is a fault."""
    f = world.device.open(world.proc())
    assert errno_of(world.ioctl, f, cmd, b"\x10\x00") == EFAULT


@pytest.mark.spec(88)
@pytest.mark.parametrize(("lo", "hi"), [(10, 9), (1 << 31, 1 << 31), (1, 1 << 31),
                                        (0xFFFFFFFF, 0xFFFFFFFF)])
def test_88_alloc_bad_range_einval(world: World, lo: int, hi: int) -> None:
    f = world.device.open(world.proc())
    assert errno_of(world.alloc, f, lo, hi) == EINVAL


@pytest.mark.spec(89)
@pytest.mark.parametrize(("argsz", "flags"), [(15, 0), (0, 0), (16, 2)])
def test_89_alloc_argsz_or_flags_einval(world: World, argsz: int, flags: int) -> None:
    f = world.device.open(world.proc())
    assert errno_of(world.alloc, f, argsz=argsz, flags=flags) == EINVAL
    assert len(world.core) == 0


@pytest.mark.spec(90)
def test_90_alloc_returns_lowest_free_in_range(world: World) -> None:
    f = world.device.open(world.proc())
    assert [world.alloc(f, 5, 10) for _ in range(3)] == [5, 6, 7]
    assert world.free(f, 6) == 0
    assert world.alloc(f, 5, 10) == 6
    assert world.alloc(f, 100, MAX31) == 100
    assert world.alloc(f, MAX31, MAX31) == MAX31  # the largest user ID


def test_alloc_min_zero(world: World) -> None:
    """v4 (quirk 11) hands out IOASID 0, VT-d's RID_PASID; fixed starts every range at 1."""
    f = world.device.open(world.proc())
    if world.core.knobs.user_min_zero:
        assert world.alloc(f, 0, 10) == 0
        assert errno_of(world.alloc, f, 0, 0) == EINVAL  # [0, 0] is full now
    else:
        assert world.alloc(f, 0, 10) == 1
        assert errno_of(world.alloc, f, 0, 0) == EINVAL


def test_alloc_min_zero_knob_alone() -> None:
    """``user_min_zero`` switched alone over the fixed profile."""
    w = World("fixed", user_min_zero=True)
    f = w.device.open(w.proc())
    assert w.alloc(f, 0, 0) == 0


@pytest.mark.spec(91)
def test_91_alloc_failures(world: World) -> None:
    """v4: -EINVAL whatever the cause. fixed: EAGAIN for the cgroup limit, ENOSPC for a full
    range, ENOSPC for exhausted capacity."""
    distinct = world.core.knobs.user_errors == "distinct"
    world.cgroup("t", 2)
    p = world.proc("/t")
    f = world.device.open(p)
    world.alloc(f, 1, 1)
    assert errno_of(world.alloc, f, 1, 1) == (ENOSPC if distinct else EINVAL)  # range full
    world.alloc(f, 2, 2)
    assert errno_of(world.alloc, f) == (EAGAIN if distinct else EINVAL)  # cgroup limit
    cg = world.cgroups.lookup("/t")
    assert cg.counter == 2
    assert cg.events == (1 if distinct else 0)  # the events knob goes with the profile


def test_alloc_capacity_exhausted_enospc() -> None:
    w = World("fixed")
    w.core.install_capacity(3)
    f = w.device.open(w.proc())
    assert [w.alloc(f) for _ in range(3)] == [1, 2, 3]
    assert errno_of(w.alloc, f) == ENOSPC


def test_user_errors_knob_alone() -> None:
    """``user_errors="v4"`` switched alone over fixed: the cgroup refusal becomes EINVAL, FREE of
    an unknown ID 0, an unknown command EINVAL."""
    w = World("fixed", user_errors="v4")
    w.cgroup("t", 0)
    f = w.device.open(w.proc("/t"))
    assert errno_of(w.alloc, f) == EINVAL
    assert w.free(f, 12345) == 0
    assert errno_of(w.ioctl, f, 0x6968) == EINVAL


@pytest.mark.spec(92)
def test_92_free(world: World) -> None:
    """Negative IDs are EINVAL in both. v4: unknown and foreign IDs (here one of the VT-d host
    set) report 0, and the foreign one survives. fixed: ENOENT and EACCES; a second FREE of a
    pending ID is ENOENT."""
    host = world.core.set_alloc(None, 0x8000, IoasidSetType.NULL)
    theirs = world.core.alloc(host, 1, 100)
    f = world.device.open(world.proc())
    mine = world.alloc(f)
    assert errno_of(world.free, f, -1) == EINVAL
    if world.core.knobs.user_errors == "v4":
        assert world.free(f, 999) == 0
        assert world.free(f, theirs) == 0
    else:
        assert errno_of(world.free, f, 999) == ENOENT
        assert errno_of(world.free, f, theirs) == EACCES
        world.core.get(None, mine)
        assert world.free(f, mine) == 0
        assert errno_of(world.free, f, mine) == ENOENT  # already FREE_PENDING
        world.core.put(None, mine)
    assert theirs in world.core


@pytest.mark.spec(93)
def test_93_unknown_command(world: World) -> None:
    f = world.device.open(world.proc())
    want = ENOTTY if world.core.knobs.user_errors == "distinct" else EINVAL
    assert errno_of(world.ioctl, f, 0x6968) == want
    assert errno_of(world.ioctl, f, 0xC0106966) == want  # ALLOC's nr with a size encoded


def test_free_with_references_goes_pending_and_notifies(world: World) -> None:
    """FREE of an ID someone else references: FREE_PENDING, FREE on the global chain then the
    set's, and the cgroup is uncharged only at the final put."""
    world.cgroup("t", 10)
    p = world.proc("/t")
    f = world.device.open(p)
    ioasid = world.alloc(f)
    seen: list[tuple[str, int]] = []
    world.core.register_notifier(None, recorder(seen, "g"))
    world.core.register_notifier(f.user.ioasid_set, recorder(seen, "s"))
    world.core.get(None, ioasid)
    assert world.free(f, ioasid) == 0
    assert world.core.data(ioasid).state == IoasidState.FREE_PENDING
    assert seen == [("g", IoasidNotify.FREE), ("s", IoasidNotify.FREE)]
    assert world.cgroups.lookup("/t").counter == 1
    world.core.put(None, ioasid, task=p)
    assert ioasid not in world.core and world.cgroups.lookup("/t").counter == 0


@pytest.mark.spec(95)
def test_95_alloc_after_set_emptied(world: World) -> None:
    """v4: freeing the last ID destroys the set and later ALLOCs on the FD fail with EINVAL.
    fixed: the set lives as long as the file."""
    f = world.device.open(world.proc())
    world.free(f, world.alloc(f))
    if world.core.knobs.set_lifetime == "auto":
        assert not world.core.set_valid(f.user.ioasid_set)
        assert errno_of(world.alloc, f) == EINVAL
    else:
        assert world.alloc(f) == 1


# ---------------------------------------------------------------------------------- ownership
def test_file_used_by_another_process(world: World) -> None:
    """The file reached another process (fork, SCM_RIGHTS). fixed: ALLOC and FREE are refused
    with EPERM, GET_INFO works. v4: ALLOC fails through the cgroup charge (EINVAL), FREE works
    (the series' hole)."""
    owner, other = world.proc(), world.proc()
    f = world.device.open(owner)
    ioasid = world.alloc(f)
    assert world.ioctl(f, uapi.IOASID_GET_INFO, uapi.INFO.pack(12, 0, 0), other)[0] == 0
    if world.core.knobs.user_errors == "distinct":
        assert errno_of(world.alloc, f, task=other) == EPERM
        assert errno_of(world.free, f, ioasid, task=other) == EPERM
        assert ioasid in world.core
    else:
        assert errno_of(world.alloc, f, task=other) == EINVAL
        assert world.free(f, ioasid, task=other) == 0
        assert ioasid not in world.core


@pytest.fixture(params=["fixed", "v4"])
def two_opener_world(request: pytest.FixtureRequest) -> World:
    """A world where two processes can open: in v4 only with the quota-0 grab switched off
    (the first opener's quota-0 set otherwise takes the whole pool and
    the second open is refused)."""
    if request.param == "v4":
        return World("v4", set_quota_zero_takes_all=False)
    return World("fixed")


def test_two_processes_cannot_free_each_others_ids(two_opener_world: World) -> None:
    world = two_opener_world
    a, b = world.proc(), world.proc()
    fa, fb = world.device.open(a), world.device.open(b)
    ida, idb = world.alloc(fa), world.alloc(fb)
    for f, other in ((fa, idb), (fb, ida)):
        try:
            world.free(f, other)
        except IoasidError as exc:
            assert exc.errno == EACCES
    assert ida in world.core and idb in world.core


# ---------------------------------------------------------------------------------- release
@pytest.mark.spec(94)
def test_94_release_frees_every_id(world: World) -> None:
    world.cgroup("t", 10)
    p = world.proc("/t")
    f = world.device.open(p)
    ids = [world.alloc(f) for _ in range(4)]
    world.core.get(None, ids[1])  # still referenced elsewhere
    events: list[tuple[str, int]] = []
    world.core.register_notifier(None, recorder(events))
    world.device.release(f)
    assert [i in world.core for i in ids] == [False, True, False, False]
    assert world.core.data(ids[1]).state == IoasidState.FREE_PENDING
    assert events == [(IoasidNotify.FREE, ids[1])]  # the others were reclaimed silently
    assert p not in world.device.users and f.released
    world.core.put(None, ids[1], task=p)
    assert len(world.core) == 0
    assert world.cgroups.lookup("/t").counter == 0
    assert world.core.find_mm_set(p.mm) is None  # the set went with its last ID


def test_release_twice_and_ioctl_after_release(world: World) -> None:
    f = world.device.open(world.proc())
    world.alloc(f)
    world.device.release(f)
    world.device.release(f)
    want = EBADF if world.core.knobs.user_errors == "distinct" else EINVAL
    assert errno_of(world.alloc, f) == want


def test_release_returns_the_capacity(fixed: World) -> None:
    avail = fixed.core.capacity_avail
    f = fixed.device.open(fixed.proc())
    for _ in range(3):
        fixed.alloc(f)
    assert fixed.core.capacity_avail == avail - 3
    fixed.device.release(f)
    assert fixed.core.capacity_avail == avail and fixed.core.sets == []


def test_reopen_after_release(world: World) -> None:
    p = world.proc()
    f = world.device.open(p)
    world.alloc(f)
    world.device.release(f)
    if world.core.knobs.profile == "v4":
        # the first set's quota (all of the pool) leaked: a new quota-0 set gets quota 0
        f2 = world.device.open(p)
        assert f2.user.ioasid_set.quota == 0
        assert errno_of(world.alloc, f2) == EINVAL
    else:
        f2 = world.device.open(p)
        assert world.alloc(f2) == 1


# ---------------------------------------------------------------------------------- exit
def test_exit_releases_the_file(world: World) -> None:
    """A process's exit closes its file. fixed: the charges go. v4: the mm is already gone when
    the file is closed, so the uncharge is skipped ("MM defunct", quirk 7)."""
    world.cgroup("t", 10)
    p = world.proc("/t")
    f = world.device.open(p)
    world.alloc(f)
    world.alloc(f)
    world.cgroups.exit(p)
    assert f.released and len(world.core) == 0
    leak = 2 if world.core.knobs.uncharge_skips_defunct_mm else 0
    assert world.cgroups.lookup("/t").counter == leak


def test_exit_releases_an_orphan_set(world: World) -> None:
    """After a daemon restart the device has no files but the sets are back: the process's
    exit releases its set all the same."""
    p = world.proc()
    f = world.device.open(p)
    ids = [world.alloc(f) for _ in range(3)]
    world.device.users.clear()  # what a restart loses
    world.device._files.clear()
    assert all(i in world.core for i in ids)
    world.cgroups.exit(p)
    assert len(world.core) == 0
    assert world.core.find_mm_set(p.mm) is None


def test_exit_of_process_without_device_changes_nothing(world: World) -> None:
    a, b = world.proc(), world.proc()
    f = world.device.open(a)
    world.alloc(f)
    world.cgroups.exit(b)
    assert len(world.core) == 1 and not f.released


def test_exit_keeps_user_held_by_a_kernel_user(world: World) -> None:
    """``user_get_from_task`` holds the user: the exit closes the file but the IDs stay until
    the holder's put."""
    p = world.proc()
    f = world.device.open(p)
    ioasid = world.alloc(f)
    user = world.device.user_get_from_task(p)
    seen: list[int] = []
    world.device.user_for_each_id(user, lambda i, d: seen.append(i))
    assert seen == [ioasid]
    world.cgroups.exit(p)
    assert f.released and ioasid in world.core
    world.device.user_put(user, p)
    assert ioasid not in world.core


# ---------------------------------------------------------------------------------- batches
def batch_alloc(w: World, f, count: int, lo: int = 1, hi: int = MAX31, task=None,
                argsz: int = 20) -> list[int]:
    ret, out = w.ioctl(f, uapi.IOASID_REQUEST_ALLOC_BATCH,
                       uapi.ALLOC_BATCH.pack(argsz, 0, lo, hi, count), task)
    ids = list(memoryview(out).cast("I"))
    assert ret == len(ids)
    return ids


def batch_free(w: World, f, ids: list[int], task=None, argsz: int | None = None) -> int:
    n = len(ids)
    arg = uapi.FREE_BATCH.pack(argsz if argsz is not None else 12 + 4 * n, 0, n)
    arg += b"".join(i.to_bytes(4, "little") for i in ids)
    return w.ioctl(f, uapi.IOASID_REQUEST_FREE_BATCH, arg, task)[0]


def test_what_one_batch_allocation_made_is_reported_alike_and_nothing_else(world: World) -> None:
    """``Change.ids_alike`` holds for exactly the IDs one batch allocation made, each then in
    its set's index with the first's fields and no private data; not for a single
    allocation, a batch free, a batch recorded after other IDs, nor one made one by one (the
    set has notifier blocks to call)."""
    from operator import attrgetter

    from ioasidsd.model.changes import ChangeKind

    fields = attrgetter("set", "state", "refs", "spid", "cgroup", "pooled", "private")
    world.cgroup("t", 10_000)
    f = world.device.open(world.proc("/t"))

    def taken():
        return world.device.take_change(ChangeKind.IOASID)

    taken()  # the open
    ids = batch_alloc(world, f, 300)
    change = taken()
    assert change.ids_alike and list(change.ids) == ids
    get = world.core.ioasid_index.get
    first = fields(get(ids[0]))
    assert first[-1] is None and set(ids) <= f.user.ioasid_set.xa
    assert all(fields(get(i)) == first for i in ids)
    world.alloc(f)
    assert not taken().ids_alike
    batch_free(world, f, ids[:10])
    assert not taken().ids_alike
    world.alloc(f)  # one window: another allocation's ID, then a batch
    batch_alloc(world, f, 5)
    change = taken()
    assert len(change.ids) == 6 and not change.ids_alike
    batch_alloc(world, f, 5)  # a batch, then another ID in the same window
    world.alloc(f)
    assert not taken().ids_alike
    world.core.register_notifier(f.user.ioasid_set, recorder([]))
    batch_alloc(world, f, 5)  # one by one: notifiers are called for each
    change = taken()
    assert len(change.ids) == 5 and not change.ids_alike


def test_batch_alloc_and_free(world: World) -> None:
    world.cgroup("t", 100)
    f = world.device.open(world.proc("/t"))
    ids = batch_alloc(world, f, 50, 10, 1000)
    assert ids == list(range(10, 60))
    assert world.cgroups.lookup("/t").counter == 50
    assert batch_free(world, f, ids[::2]) == 25
    assert world.cgroups.lookup("/t").counter == 25
    assert batch_alloc(world, f, 3, 10, 1000) == [10, 12, 14]


def test_batch_alloc_is_all_or_nothing(world: World) -> None:
    distinct = world.core.knobs.user_errors == "distinct"
    world.cgroup("t", 5)
    p = world.proc("/t")
    f = world.device.open(p)
    held = world.alloc(f)
    assert errno_of(batch_alloc, world, f, 5) == (EAGAIN if distinct else EINVAL)
    assert world.cgroups.lookup("/t").counter == 1
    assert sorted(d.id for d in world.core.ioasids()) == [held]
    assert batch_alloc(world, f, 4) == [2, 3, 4, 5]


@pytest.mark.parametrize("count", [0, uapi.IOASID_BATCH_MAX + 1])
def test_batch_count_limits(world: World, count: int) -> None:
    f = world.device.open(world.proc())
    assert errno_of(batch_alloc, world, f, count) == EINVAL
    assert errno_of(world.ioctl, f, uapi.IOASID_REQUEST_FREE_BATCH,
                    uapi.FREE_BATCH.pack(12, 0, count)) == EINVAL


def test_batch_free_checks(two_opener_world: World) -> None:
    """fixed: nothing is freed unless every ID can be (unknown ENOENT, foreign EACCES,
    duplicate EINVAL). v4: each ID as FREE would, the result is the count."""
    world = two_opener_world
    a, b = world.proc(), world.proc()
    fa, fb = world.device.open(a), world.device.open(b)
    mine = batch_alloc(world, fa, 3)
    theirs = world.alloc(fb)
    if world.core.knobs.user_errors == "distinct":
        assert errno_of(batch_free, world, fa, [*mine, 999]) == ENOENT
        assert errno_of(batch_free, world, fa, [*mine, theirs]) == EACCES
        assert errno_of(batch_free, world, fa, [mine[0], mine[0]]) == EINVAL
        assert all(i in world.core for i in mine)
    else:
        assert batch_free(world, fa, [*mine, 999, theirs]) == 5
        assert not any(i in world.core for i in mine)
    assert theirs in world.core


def test_batch_free_argsz_and_short_array(world: World) -> None:
    f = world.device.open(world.proc())
    ids = batch_alloc(world, f, 2)
    assert errno_of(batch_free, world, f, ids, argsz=12 + 4) == EINVAL  # argsz misses one ID
    arg = uapi.FREE_BATCH.pack(20, 0, 2) + ids[0].to_bytes(4, "little")
    assert errno_of(world.ioctl, f, uapi.IOASID_REQUEST_FREE_BATCH, arg) == EFAULT
    assert all(i in world.core for i in ids)


# ---------------------------------------------------------------------------------- binds
class RecordingBinder:
    def __init__(self, error: int = 0) -> None:
        self.calls: list[tuple] = []
        self.error = error

    def bind_gpasid(self, task, hpasid, gpasid, devid, *, addr_width, gpgd) -> None:
        if self.error:
            raise IoasidError(self.error)
        self.calls.append(("bind", task.pid, hpasid, gpasid, devid, addr_width, gpgd))

    def unbind_gpasid(self, task, hpasid, devid) -> None:
        if self.error:
            raise IoasidError(self.error)
        self.calls.append(("unbind", task.pid, hpasid, devid))


def test_bind_without_iommu_enodev(world: World) -> None:
    f = world.device.open(world.proc())
    arg = uapi.BIND_GPASID.pack(32, 0, 1, 0, 0x10, 48, 0x1000)
    assert errno_of(world.ioctl, f, uapi.IOASID_BIND_GPASID, arg) == ENODEV


def test_bind_and_unbind_reach_the_binder(world: World) -> None:
    binder = RecordingBinder()
    world.device.binder = binder
    p = world.proc()
    f = world.device.open(p)
    h = world.alloc(f)
    dev = uapi.parse_bdf("00:02.0")
    world.ioctl(f, uapi.IOASID_BIND_GPASID,
                uapi.BIND_GPASID.pack(32, uapi.IOASID_BIND_GPASID_VAL, h, 7, dev, 48, 0x5000))
    world.ioctl(f, uapi.IOASID_BIND_GPASID, uapi.BIND_GPASID.pack(32, 0, h, 7, dev, 57, 0))
    world.ioctl(f, uapi.IOASID_UNBIND_GPASID, uapi.UNBIND_GPASID.pack(16, 0, h, dev))
    assert binder.calls == [("bind", p.pid, h, 7, 0x10, 48, 0x5000),
                            ("bind", p.pid, h, None, 0x10, 57, 0),
                            ("unbind", p.pid, h, 0x10)]
    bad = uapi.BIND_GPASID.pack(32, 2, h, 7, dev, 48, 0)
    assert errno_of(world.ioctl, f, uapi.IOASID_BIND_GPASID, bad) == EINVAL
    binder.error = EPERM
    ok = uapi.BIND_GPASID.pack(32, 0, h, 7, dev, 48, 0)
    assert errno_of(world.ioctl, f, uapi.IOASID_BIND_GPASID, ok) == EPERM


def test_bdf_parsing() -> None:
    assert uapi.parse_bdf("00:02.0") == 0x10
    assert uapi.parse_bdf("0001:3a:00.1") == 0x13A01
    assert uapi.format_devid(0x13A01) == "0001:3a:00.1"
    for bad in ("", "00:02", "0:0:0:0.0", "00:20.0", "zz:00.0"):
        with pytest.raises(ValueError):
            uapi.parse_bdf(bad)


# ---------------------------------------------------------------------------------- misc
def test_command_numbers_are_the_series() -> None:
    assert (uapi.IOASID_GET_API_VERSION, uapi.IOASID_GET_INFO, uapi.IOASID_REQUEST_ALLOC,
            uapi.IOASID_REQUEST_FREE) == (0x6964, 0x6965, 0x6966, 0x6967)
    assert (uapi.INFO.size, uapi.ALLOC_REQUEST.size, uapi.FREE_ARG.size) == (12, 16, 4)
    # extensions: _IOWR('i', 0xa0, 20 bytes) and friends
    assert uapi.IOASID_REQUEST_ALLOC_BATCH == 0xC01469A0
    assert uapi.IOASID_BIND_GPASID == 0x402069A2


def test_series_example_at_model_level(fixed: World) -> None:
    """The series' cgroup document: limit 5, five allocations, the sixth refused and counted, a
    holder moved in makes current 6 over max 5, exits bring it back to 0. (The end-to-end
    version runs against the daemon.)"""
    test1 = fixed.cgroup("test1", 5)
    holder = fixed.proc()
    fh = fixed.device.open(holder)
    fixed.alloc(fh)
    files = [fixed.device.open(fixed.proc("/test1")) for _ in range(6)]
    for n, f in enumerate(files[:5], 1):
        fixed.alloc(f)
        assert test1.counter == n
    assert errno_of(fixed.alloc, files[5]) == EAGAIN and test1.events == 1
    fixed.cgroups.attach(holder, test1)
    assert (test1.counter, test1.limit) == (6, 5)
    assert errno_of(fixed.alloc, files[5]) == EAGAIN and test1.events == 2
    for f in [*files, fh]:
        fixed.cgroups.exit(f.opener)
    assert test1.counter == 0 and len(fixed.core) == 0


def test_series_example_v4_single_opener(v4: World) -> None:
    """v4: the first opener's quota-0 set takes the whole pool, so a second process cannot even
    open; the one process gets five IDs, the sixth is EINVAL and events stay 0."""
    test1 = v4.cgroup("test1", 5)
    f = v4.device.open(v4.proc("/test1"))
    assert v4.core.capacity_avail == 0
    assert errno_of(v4.device.open, v4.proc("/test1")) == ENOSPC
    assert [v4.alloc(f) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert errno_of(v4.alloc, f) == EINVAL
    assert (test1.counter, test1.events) == (5, 0)
