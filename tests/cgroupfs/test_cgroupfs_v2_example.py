"""The series' documentation example (``examples/series-example-v2.sh``), run as a shell script
on our cgroup-v2 mount with the ``/dev/ioasid`` server of the same ``System``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ioasidsd.model.workqueue import OrderedWorkQueue
from ioasidsd.system import System
from ioasidsd.userapi.server import UserApiServer

SCRIPT = Path(__file__).parents[2] / "examples" / "series-example-v2.sh"
IOASIDCTL = str(Path(sys.executable).with_name("ioasidctl"))


@pytest.fixture
def served_v2(needs_fuse: None, mountdir: Path, tmp_path: Path) -> Iterator[tuple[System, Path,
                                                                                  Path]]:
    from cgroupfs import mount

    system = System(hierarchy="v2", wq=OrderedWorkQueue(mode="manual"))
    runtime = tmp_path / "run"
    runtime.mkdir()
    server = UserApiServer(system, str(runtime))
    server.start()
    handle = mount(system, str(mountdir))
    try:
        yield system, mountdir, runtime
    finally:
        handle.unmount()
        server.stop()


def test_the_series_example_runs_as_documented(served_v2) -> None:
    system, mnt, runtime = served_v2
    env = dict(os.environ, MNT=str(mnt), IOASIDCTL=IOASIDCTL, IOASIDS_RUNTIME_DIR=str(runtime))
    done = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ioasids.current:1", "ioasids.max:5",
        "ioasids.current:5", "ioasids.max:5",
        "ioasids.current:6", "ioasids.max:5",
    ]
    test1 = system.cgroups.lookup("/test1")
    assert (test1.limit, test1.events_local) == (5, 1)  # the one refusal of step 5


def test_without_the_controller_enabled_there_is_no_ioasids_max(served_v2) -> None:
    _system, mnt, _runtime = served_v2
    (mnt / "test1").mkdir()
    assert not (mnt / "test1" / "ioasids.max").exists()
    (mnt / "cgroup.subtree_control").write_text("+ioasids")
    assert (mnt / "test1" / "ioasids.max").read_text() == "0\n"
