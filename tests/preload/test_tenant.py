"""A local user other than root runs wrapped programs: it sees the hierarchy and uses
``/dev/ioasid`` as itself, and the kernel's permissions still decide what it may change, as on
the kernel's ``pids`` hierarchy."""

from __future__ import annotations

import shutil

import pytest
from daemon.daemons import BIN, Daemon

from .conftest import HERE, compile_c


@pytest.fixture
def open_daemon(open_tmp, library):
    from daemon.daemons import fuse_missing

    reason = fuse_missing()
    if reason:
        pytest.skip(reason)
    d = Daemon(open_tmp)
    try:
        yield d.start()
    finally:
        d.cleanup()


@pytest.mark.usefixtures("cgtools")
def test_a_tenant_under_the_wrapper(tenant, open_daemon, open_tmp, kernel_pids) -> None:
    d = open_daemon
    client = compile_c(HERE / "ioasid_client.c", open_tmp / "ioasid_client")
    (d.mount / "vm").mkdir()
    (d.mount / "vm" / "ioasids.max").write_text("1")
    shutil.chown(d.mount / "vm" / "cgroup.procs", tenant.uid, tenant.gid)
    ctl = [str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "wrap", "--"]
    done = tenant.run([*ctl, "sh", "-c", f'echo $$ > {d.mount}/vm/cgroup.procs && '
                                         f'head -1 /proc/self/cgroup && exec {client} open '
                                         'alloc:1:10 alloc:1:10'])
    assert done.returncode == 0, done.stderr
    first, *steps = done.stdout.splitlines()
    assert first.endswith(":ioasids:/vm")
    assert steps == ["open 0", "alloc 1", "alloc EAGAIN"]
    assert (d.mount / "vm" / "ioasids.events").read_text() == "max 1\n"
    # what it may not do, it may not do through the tools either: as in the kernel's hierarchy
    kernel = tenant.run(["cgcreate", "-g", "pids:/tenant-try"])
    ours = tenant.run([*ctl, "cgcreate", "-g", "ioasids:/tenant-try"])
    assert kernel.returncode == ours.returncode != 0
    assert ours.stderr.replace("ioasids", "pids") == kernel.stderr
    assert not (d.mount / "tenant-try").exists() and not (kernel_pids / "tenant-try").exists()
