"""The one exception type of the model: an error that carries a kernel errno.

Every face maps it to its own form: the FUSE layer returns ``-errno`` to the kernel, the
user-API socket puts ``-errno`` in its reply, the CLI prints the message and exits non-zero.
"""

from __future__ import annotations

import errno as _errno
import os

# Where Python's errorcode picks a libc alias, the kernel's name (EDEADLOCK, ENOTSUP are aliases).
_KERNEL_NAMES = {_errno.EDEADLK: "EDEADLK", _errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(code: int) -> str:
    """The kernel's symbolic name of errno ``code`` (``"ENOSPC"``), or the number as text."""
    return _KERNEL_NAMES.get(code) or _errno.errorcode.get(code, str(code))


class IoasidError(OSError):
    """An operation of the model was refused; ``errno`` says why, as the kernel would.

    A refused operation has changed nothing (the model rolls back before raising), but for the
    counters a refusal counts (``events``). ``level``: the path of the cgroup whose
    ``ioasids.max`` refused a charge, when a limit refused (set by the controller and kept by
    whoever re-raises the refusal as another errno); ``None`` otherwise.
    """

    level: str | None = None

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail or os.strerror(code))

    @property
    def name(self) -> str:
        """The symbolic errno name, e.g. ``"ENOSPC"``."""
        return errno_name(self.errno or 0) if self.errno else str(self.errno)

    def __str__(self) -> str:
        return f"{self.name}: {self.strerror}"
