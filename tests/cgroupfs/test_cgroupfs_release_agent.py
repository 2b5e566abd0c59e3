"""``release_agent`` through the mount and on the kernel's cgroup-v1 ``pids`` hierarchy: any
byte but NUL is stored (``cgroup_release_agent_write`` keeps the C string, stripped by
``strstrip``, whose ``isspace`` counts the byte 0xA0 too) and read back exactly, with a newline.
The kernel's value is saved and restored."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

KERNEL_PIDS = Path("/sys/fs/cgroup/pids")

WRITTEN_AND_READ = [
    (b"\xa05\xa0", b"5\n"),
    (b"\xff\xfe/x\xe9\x85", b"\xff\xfe/x\xe9\x85\n"),
    (b"\xc2\xa0/a\xc2\xa0", b"\xc2\xa0/a\xc2\n"),  # strips the byte 0xA0, not U+00A0
    (b"\xa0\xa0/a b\xa0\n\xa0", b"/a b\n"),
    (b"/a\xa0b", b"/a\xa0b\n"),
    (b"\x1c/a\x1c", b"\x1c/a\x1c\n"),  # isspace is 9-13, 32 and 160 only
    (b"/caf\xc3\xa9 \xed\xa0\x80\x00junk", b"/caf\xc3\xa9 \xed\xa0\x80\n"),
    (b" \t\v\f\r/sbin/agent\n", b"/sbin/agent\n"),
    (b"\n", b"\n"),
]
"""What one write(2) stores, and what reading the file then gives: the kernel's answers."""


@pytest.fixture(params=["ours", "kernel"])
def root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """The root of our mount, or of the kernel's pids hierarchy with its ``release_agent``
    restored afterwards."""
    if request.param == "ours":
        yield request.getfixturevalue("mounted")
        return
    if os.geteuid() != 0 or not (KERNEL_PIDS / "release_agent").exists():
        pytest.skip(f"needs root and a kernel cgroup-v1 pids hierarchy at {KERNEL_PIDS}")
    saved = (KERNEL_PIDS / "release_agent").read_bytes()
    try:
        yield KERNEL_PIDS
    finally:
        (KERNEL_PIDS / "release_agent").write_bytes(saved)  # "\n" at least: stripped, empty


def put(path: Path, data: bytes) -> str:
    """One write(2) of ``data``: ``ok N`` or the errno's name."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        return f"ok {os.write(fd, data)}"
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)


@pytest.mark.parametrize(("written", "read"), WRITTEN_AND_READ)
def test_release_agent_keeps_any_byte(root: Path, written: bytes, read: bytes) -> None:
    agent = root / "release_agent"
    assert put(agent, written) == f"ok {len(written)}"
    assert agent.read_bytes() == read
