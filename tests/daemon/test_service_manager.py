"""A real daemon under a fake service manager: the ``$NOTIFY_SOCKET`` datagrams it sends while
it runs (``WATCHDOG=1`` at half ``$WATCHDOG_USEC``, ``STATUS=`` following the use of IOASIDs)."""

from __future__ import annotations

import re
import subprocess
import time

from .daemons import BIN, TIMEOUT

STATUS = re.compile(r"serving (?P<mount>\S+): (?P<used>\d+) of (?P<capacity>\d+) IOASIDs in "
                    r"use, (?P<cgroups>\d+) cgroups")


def next_status(daemon, wanted) -> dict[str, str]:
    """The first ``STATUS=`` line, from now on, whose fields satisfy ``wanted``."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        message = daemon.wait_for("STATUS", timeout=max(0.1, deadline - time.monotonic()))
        found = STATUS.fullmatch(message["STATUS"])
        assert found, message
        if wanted(found.groupdict()):
            return found.groupdict()


def test_watchdog_pings_at_half_the_interval(daemons):
    d = daemons().start(env={"WATCHDOG_USEC": "400000"})
    for _ in range(4):  # again and again (their spacing: test_notify.py, on a fake clock)
        assert d.wait_for("WATCHDOG")["WATCHDOG"] == "1"
    assert any(e["event"] == "watchdog enabled" and e["interval"] == 0.4 for e in d.events())
    assert d.stop() == 0


def test_no_watchdog_for_another_pid(daemons):
    d = daemons().start(env={"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"})
    assert d.stop() == 0
    d.wait_for("STOPPING")
    assert not any("WATCHDOG" in message for message in d.messages)
    assert not any(e["event"] == "watchdog enabled" for e in d.events())


def test_status_follows_the_use_of_ioasids(daemons):
    d = daemons()
    d.start(ready=False)
    ready = d.wait_for("READY")
    line = STATUS.fullmatch(ready["STATUS"])
    assert line is not None
    assert (line["mount"], line["used"], line["cgroups"]) == (str(d.mount), "0", "1")
    capacity = line["capacity"]

    (d.mount / "vms").mkdir()
    (d.mount / "vms" / "gold").mkdir()
    assert next_status(d, lambda f: f["cgroups"] == "3")["used"] == "0"

    holder = subprocess.Popen([str(BIN / "ioasidctl"), "--runtime-dir", str(d.run), "alloc",
                               "-n", "2", "--hold"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        ids = [holder.stdout.readline(), holder.stdout.readline()]
        assert all(i.strip().isdigit() for i in ids)
        held = next_status(d, lambda f: f["used"] == "2")
        assert (held["capacity"], held["cgroups"]) == (capacity, "3")
    finally:
        holder.terminate()
        holder.wait()
    next_status(d, lambda f: f["used"] == "0")  # the holder's exit freed them
    assert d.stop() == 0
