"""``ioasidctl restore``'s changes, all or nothing.

A restore is a list of steps (``ioasidsd.cli.snapshot.plan``: cgroups to make, control files to
write) applied through the mount, so that a user may restore exactly what the same user could
make with ``mkdir`` and ``echo``. Before the first step, ``rehearse`` refuses the whole list
when one step would be refused: a file or directory the user may not write (checked on the
mount), or a value the daemon would refuse (the ``rehearse`` control verb tries every step, in
order, on a copy of the model; root only, as the copy holds the daemon up). If a step is still
refused while applying (the hierarchy changed in between, the list was too long to rehearse in
one request, or the caller is not root), ``apply`` undoes the steps it made, newest first,
before it reports the refusal.
"""

from __future__ import annotations

import errno
import json
import os
from typing import TYPE_CHECKING

from ioasidsd.cli.ctl import CONTROLLER, Env, capacity_cause, fail, oserror

if TYPE_CHECKING:
    from ioasidsd.cli.snapshot import Step

__all__ = ["apply", "rehearse"]


def _what(step: Step) -> str:
    return f"create {step.path}" if step.name is None else f"{step.path} {step.name}"


def _cause(env: Env, step: Step, exc: OSError) -> str | None:
    if exc.errno == errno.ENOSPC and step.name == f"{CONTROLLER}.max":
        return capacity_cause(env)
    if exc.errno == errno.EACCES:
        return "permission denied on the mount"
    return None


def rehearse(env: Env, steps: list[Step]) -> None:
    """Refuse (exit status 1, nothing changed) a restore one of whose ``steps`` would be
    refused: a step on an existing cgroup the caller may not write (``EACCES``), or one the
    daemon would refuse. The daemon is not asked when the steps do not fit in one control
    request; it does not answer a caller other than root, nor a version without the verb
    (then ``apply`` undoes a refused restore)."""
    from ioasidsd.control.client import ControlError
    from ioasidsd.control.protocol import MAX_REQUEST

    for step in steps:
        target = env.dir(step.path.rpartition("/")[0] or "/") if step.name is None \
            else env.dir(step.path) / step.name
        mode = os.W_OK | os.X_OK if step.name is None else os.W_OK
        if target.exists() and not os.access(target, mode):
            exc = OSError(errno.EACCES, os.strerror(errno.EACCES))
            fail(f"{oserror(f'restore: {_what(step)}', exc)}; nothing changed")
    wire = [[step.path, step.name, step.data] for step in steps]
    if not wire or len(json.dumps(wire)) > MAX_REQUEST - 64:
        return
    try:
        env.client.call("rehearse", steps=wire)
    except ControlError as exc:
        if exc.error == "EPERM" or (exc.error == "EINVAL" and "unknown verb" in str(exc)):
            return  # not root, or a daemon older than the verb: apply undoes a refusal
        fail(f"restore: {exc} ({exc.error}); nothing changed")


def _do(env: Env, path: str, name: str | None, data: str) -> None:
    if name is None:
        os.mkdir(env.dir(path))
        return
    fd = os.open(env.dir(path) / name, os.O_WRONLY)
    try:
        os.write(fd, data.encode(errors="surrogateescape") + b"\n")
    finally:
        os.close(fd)


def _undo(env: Env, step: Step) -> None:
    if step.name is None:
        os.rmdir(env.dir(step.path))
    else:
        _do(env, step.path, step.name, step.undo)


def apply(env: Env, steps: list[Step]) -> None:
    """Make ``steps`` in order through the mount. At the first refusal, undo the steps made,
    newest first, and end the command (exit status 1) with one line naming the refused step,
    its errno and cause, and whether undoing left anything changed."""
    done: list[Step] = []
    for step in steps:
        try:
            _do(env, step.path, step.name, step.data)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, not undone
        except OSError as exc:
            left = None
            for made in reversed(done):
                try:
                    _undo(env, made)
                except OSError as undo_exc:
                    left = f"undoing {_what(made)} failed: {undo_exc.strerror or undo_exc}"
                    break
            outcome = "nothing changed" if left is None else f"{left}; partly restored"
            fail(f"{oserror(f'restore: {_what(step)}', exc, _cause(env, step, exc))}; "
                 f"{outcome}")
        done.append(step)

