"""``ioasidctl wrap``: run an unmodified program against the daemon through the preload library.

The library (``preload/``, built by ``scripts/bootstrap`` into
``preload/build/libioasids-preload.so``) makes the daemon's hierarchy a cgroup-v1 mount of the
``ioasids`` controller in ``/proc/mounts``, ``/proc/PID/mountinfo``, ``/proc/cgroups`` and
``/proc/PID/cgroup``, and ``open("/dev/ioasid")`` a connection to the daemon's socket
(``docs/preload.md``). ``wrap -- CMD`` runs CMD with it; ``wrap --env`` prints the same
environment as shell assignments for scripts (``eval "$(ioasidctl wrap --env)"``).

The environment: ``LD_PRELOAD`` (the library put first, anything there before kept),
``IOASIDS_RUNTIME_DIR`` (the daemon's runtime directory, ``ioasidctl --runtime-dir``) and
``IOASIDS_MOUNT`` (the hierarchy's mount point: ``--mount``, else the daemon's, asked through
``status``; left out when no daemon answers, and the library then takes the first
``fuse.ioasids`` mount). ``IOASIDS_PRELOAD_LIB`` names another build of the library.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:  # imported where used: ioasidctl starts without them
    from ioasidsd.control.client import ControlClient


LIBRARY_NAME = "libioasids-preload.so"
BUILT = Path(__file__).resolve().parents[2] / "preload" / "build" / LIBRARY_NAME
"""Where ``scripts/bootstrap`` builds the library in a checkout."""


def library_path() -> Path:
    """The preload library: ``$IOASIDS_PRELOAD_LIB``, else the checkout's build."""
    return Path(os.environ.get("IOASIDS_PRELOAD_LIB") or BUILT)


def preload_env(runtime_dir: str, mount: str | None, library: Path,
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a wrapped program gets, over ``base`` (default: this environment)."""
    env = dict(os.environ if base is None else base)
    others = [entry for entry in env.get("LD_PRELOAD", "").replace(":", " ").split()
              if entry and entry != str(library)]
    env["LD_PRELOAD"] = " ".join([str(library), *others])
    env["IOASIDS_RUNTIME_DIR"] = runtime_dir
    if mount:
        env["IOASIDS_MOUNT"] = mount
    else:
        env.pop("IOASIDS_MOUNT", None)
    return env


def daemon_mount(client: ControlClient) -> str | None:
    """The mount point of the daemon behind ``client``, or ``None`` when none answers."""
    from ioasidsd.control.client import ControlError

    try:
        status = client.call("status")
    except ControlError:
        return None
    mount = status.get("mount") if isinstance(status, dict) else None
    return mount if isinstance(mount, str) and mount else None


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"ioasidctl: {message}", err=True)
    raise SystemExit(code)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--mount", type=click.Path(file_okay=False), default=None,
              help="The hierarchy's mount point.  [default: the daemon's]")
@click.option("--env", "print_env", is_flag=True,
              help="Print the environment as shell assignments instead of running a command.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def wrap(ctx: click.Context, mount: str | None, print_env: bool,
         command: tuple[str, ...]) -> None:
    """Run COMMAND with the preload library: libcgroup's tools see the hierarchy as a
    cgroup-v1 mount of "ioasids", and open("/dev/ioasid") + ioctl() reach the daemon.

    Exit status: COMMAND's; 127 when it cannot be found, 126 when it cannot be run, 1 when the
    library is missing (run scripts/bootstrap), 2 for a usage error.
    """
    if print_env == bool(command):
        raise click.UsageError("give either --env or -- COMMAND [ARGS]...")
    library = library_path()
    if not library.is_file():
        _fail(f"the preload library {library} is missing (scripts/bootstrap builds it)")
    runtime_dir = str(Path(ctx.find_root().params["runtime_dir"]).absolute())
    client: ControlClient = ctx.obj.client  # the Env of ioasidctl's group: its client raises
    where = mount if mount is not None else daemon_mount(client)
    if where is not None:
        where = str(Path(where).absolute())
    env = preload_env(runtime_dir, where, library)
    if print_env:
        for name in ("LD_PRELOAD", "IOASIDS_RUNTIME_DIR", "IOASIDS_MOUNT"):
            if name in env:
                click.echo(f"export {name}={shlex.quote(env[name])}")
            else:
                click.echo(f"unset {name}")
        return
    try:
        os.execvpe(command[0], list(command), env)
    except FileNotFoundError:
        _fail(f"{command[0]}: command not found", 127)
    except OSError as exc:
        _fail(f"{command[0]}: {exc.strerror or exc}", 126)
