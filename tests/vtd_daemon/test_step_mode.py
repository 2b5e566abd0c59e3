"""The VT-d FREE cleanup in the model's default step mode, through ``System`` as faces use it:
the cleanup has run, and been saved, when the FREE ioctl returns; no thread is involved; and
the same requests give the same VT-d trace, model and saved state every time."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ioasidsd.model import OrderedWorkQueue, WorkMode

from .hosts import DEV_A, DEV_B, Host


def _stepping_host(state_dir: Path, profile_name: str = "fixed") -> Host:
    return Host(state_dir, profile_name, wq=OrderedWorkQueue("stepping_wq"))


def test_the_cleanup_has_run_and_been_saved_when_the_free_returns(tmp_path: Path) -> None:
    host = _stepping_host(tmp_path / "state")
    wq = host.core.wq
    assert wq.mode is WorkMode.STEP
    host.vmm(99, "/vm")
    f = host.open(99)
    bound = host.alloc(f)
    host.bind(f, bound, DEV_A, 3)
    host.bind(f, bound, DEV_B, 3)
    host.free(f, bound)
    # the FREE ioctl returned: the teardown of both devices, the UNBIND and the reclaim are done
    counters = host.driver.counters
    assert (counters["ioasid.cleanup_queued"], counters["ioasid.cleanups"]) == (1, 1)
    assert bound not in host.core
    assert not host.present(DEV_A, bound) and not host.present(DEV_B, bound)
    assert len(wq) == 0 and wq.errors == [] and wq.worker is None
    assert not any(t.name == wq.name for t in threading.enumerate())  # (the store has its own)
    assert host.saved()["ioasids"] == []  # handed to the store before the ioctl returned


def _session(state_dir: Path, profile_name: str) -> dict[str, Any]:
    host = _stepping_host(state_dir, profile_name)
    host.vmm(99, "/vm")
    f = host.open(99)
    first, second, spare = host.alloc(f), host.alloc(f), host.alloc(f)
    host.bind(f, first, DEV_A, 3)
    host.bind(f, second, DEV_A, 4)
    host.bind(f, second, DEV_B, 4)
    host.free(f, first)
    host.unbind(f, second, DEV_B)
    host.free(f, spare)
    host.system.exit(99)  # the last binding goes with the exit's FREE, in the same call
    return {
        "trace": [(e.seq, e.kind, e.fields) for e in host.driver.trace.events],
        "counters": host.driver.snapshot()["counters"],
        "model": host.dump(),
        "saved": {k: v for k, v in host.saved().items() if k != "clock"},
        "pending": len(host.core.wq),
    }


def test_the_same_requests_give_the_same_trace_and_state(tmp_path: Path) -> None:
    for profile_name in ("fixed", "v4"):
        one = _session(tmp_path / f"{profile_name}-1", profile_name)
        two = _session(tmp_path / f"{profile_name}-2", profile_name)
        assert one == two
        assert one["pending"] == 0 and one["model"]["ioasids"] == []
        kinds = [kind for _, kind, _ in one["trace"]]
        assert kinds.count("bind") == 3 and "unbind" in kinds
