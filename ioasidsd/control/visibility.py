"""Who may see which processes through the control API.

The control socket is open to every local user (mode 0666). A verb that shows processes or what
they hold (their IOASIDs, PASIDs, guest PASIDs, pids) shows a caller other than root only the
processes ``may_see_process`` allows; ``vtd`` does so today, and any later verb that shows
processes' IOASIDs (``ids``, ``tree``, ``top``) must call the same function rather than a rule
of its own. A record of the past (a refusal-log entry), whose process may be gone, is shown
by ``may_see_record``: the same rule applied to the uid recorded with it.
"""

from __future__ import annotations

from typing import Any

from ioasidsd.clients import Peer
from ioasidsd.host import ProcessSource


def may_see_process(peer: Peer, process: Any, source: ProcessSource) -> bool:
    """THE visibility rule of the control API: whether the caller ``peer`` may see the model's
    ``process`` (anything with ``pid`` and ``start_time``, normally a ``model.hierarchy.Process``)
    and what it holds. Every verb that shows processes or their IOASIDs (``vtd``; ``ids``,
    ``tree``, ``top`` to come) decides with this function and no rule of its own.

    Root (``peer.uid == 0``) sees every process. Another caller sees a process when, read now
    from the real process (``source.facts``), its real or effective uid is the caller's uid, as
    the kernel lets a user see its own processes in ``/proc``. A process the model holds as
    exited, one that is gone, and one whose pid now belongs to another process (its start time
    differs from the one the model recorded, however its uids read) are not seen; nor is an
    object without a pid and a start time.

    Never raises: whatever prevents reading the process's credentials (``ESRCH`` from the
    source, an ``OSError``, psutil's own errors) counts as "not seen". It reads ``/proc``: call
    it without the system lock held.
    """
    if peer.uid == 0:
        return True
    pid = getattr(process, "pid", None)
    recorded = getattr(process, "start_time", None)
    if not isinstance(pid, int) or recorded is None or not getattr(process, "alive", True):
        return False
    try:
        facts = source.facts(pid)
    except Exception:  # fail closed: a process whose credentials cannot be read is not shown
        return False
    if facts.tgid != pid or facts.start_time != recorded:
        return False
    real, effective = facts.uids[0], facts.uids[1]
    return peer.uid in (real, effective)


def may_see_record(peer: Peer, uid: int | None) -> bool:
    """Whether ``peer`` may see a record made about a process of user ``uid`` (its real or
    effective uid when the record was made; ``None``: not known): root sees every record,
    another caller those of its own uid, as ``may_see_process`` decides for a live process.
    A record whose uid is not known is shown to root only."""
    return peer.uid == 0 or (uid is not None and uid == peer.uid)
