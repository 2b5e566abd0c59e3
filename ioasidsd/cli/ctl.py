"""``ioasidctl``: the administrator's command line.

It finds the daemon by ``--runtime-dir``, else ``$IOASIDS_RUNTIME_DIR``, else ``/run/ioasidsd``,
and talks to it through the control API (``RUNTIME_DIR/control.sock``). Every failure is one line
on stderr and exit status 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ioasidsd.cli import experiments
from ioasidsd.cli.render import format_status, format_vtd
from ioasidsd.control.client import ControlClient, ControlError
from ioasidsd.control.protocol import SOCKET_NAME as CONTROL_SOCKET
from ioasidsd.userapi.client import MAX_ID, IoasidClient
from ioasidsd.userapi.protocol import SOCKET_NAME

DEFAULT_RUNTIME_DIR = "/run/ioasidsd"


class _OneLineErrors(click.Group):
    """Usage errors as one line on stderr (exit status 2), not click's usage block."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"ioasidctl: {exc.format_message()}", err=True)
            raise SystemExit(exc.exit_code) from None
        except click.Abort:
            raise SystemExit(1) from None
        raise SystemExit(code if isinstance(code, int) else 0)


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="ioasids")
@click.option("--runtime-dir", envvar="IOASIDS_RUNTIME_DIR", default=DEFAULT_RUNTIME_DIR,
              show_default=True, show_envvar=True, type=click.Path(file_okay=False),
              help="The runtime directory of the daemon to talk to.")
@click.pass_context
def main(ctx: click.Context, runtime_dir: str) -> None:
    """ioasidctl: inspect and drive a running ioasidsd."""
    ctx.obj = ControlClient(Path(runtime_dir) / CONTROL_SOCKET)


def _call(ctx: click.Context, verb: str, **args: Any) -> Any:
    client: ControlClient = ctx.obj
    try:
        return client.call(verb, **args)
    except ControlError as exc:
        click.echo(f"ioasidctl: {exc}", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--events", "-e", default=20, show_default=True, type=click.IntRange(0, 4096),
              help="How many of the last trace events to show.")
@click.pass_context
def vtd(ctx: click.Context, as_json: bool, events: int) -> None:
    """The simulated VT-d units: devices and their PASID tables, bound PASIDs, recent
    tear-downs, counters and the last trace events.

    A user other than root sees only the bindings of its own processes (real or effective uid
    its uid) and the tear-downs and trace events about them; --json then has "filtered": true.
    """
    result = _call(ctx, "vtd", events=events)
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(format_vtd(result))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The daemon's pid, profile and knobs, capacity, counts and process-tracking mode."""
    result = _call(ctx, "status")
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
    else:
        click.echo(format_status(result))


def _fail(message: str) -> NoReturn:
    click.echo(f"ioasidctl: {message}", err=True)
    raise SystemExit(1)


def _parse_range(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        lo_text, hi_text = value.split("-", 1)
        lo, hi = int(lo_text, 0), int(hi_text, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN-MAX") from None
    if not 0 <= lo <= hi:
        raise click.BadParameter(f"{value!r}: need 0 <= MIN <= MAX")
    return lo, hi


def _open(ctx: click.Context) -> IoasidClient:
    """Open the daemon's /dev/ioasid for this process, or fail with one line."""
    runtime = ctx.find_root().params["runtime_dir"]
    try:
        return IoasidClient.open(runtime)
    except FileNotFoundError:
        _fail(f"no daemon: {os.path.join(runtime, SOCKET_NAME)} does not exist")
    except ConnectionRefusedError:
        _fail(f"no daemon listening on {os.path.join(runtime, SOCKET_NAME)}")
    except OSError as exc:
        _fail(f"cannot open /dev/ioasid: {exc.strerror}")


@main.command()
@click.option("--count", "-n", default=1, show_default=True, type=click.IntRange(1, 65536),
              help="How many IOASIDs.")
@click.option("--range", "id_range", default=f"1-{MAX_ID}", show_default=True,
              metavar="MIN-MAX", callback=_parse_range, help="Inclusive range of the IDs.")
@click.option("--batch", is_flag=True,
              help="One batch request (an extension): all COUNT or none.")
@click.option("--hold", is_flag=True,
              help="Keep the IOASIDs until killed (they are freed when this process ends).")
@click.pass_context
def alloc(ctx: click.Context, count: int, id_range: tuple[int, int], batch: bool,
          hold: bool) -> None:
    """Allocate IOASIDs for this process through /dev/ioasid; print them one per line.

    They are charged to this process's cgroup and freed when it exits, so without --hold they
    are freed again right after printing. One ALLOC per ID unless --batch; the first refusal
    ends the command with its errno's message and exit status 1.
    """
    lo, hi = id_range
    dev = _open(ctx)
    with dev:
        try:
            if batch:
                for ioasid in dev.alloc_batch(count, lo, hi):
                    click.echo(ioasid)
            else:
                for _ in range(count):
                    click.echo(dev.alloc(lo, hi))
        except OSError as exc:
            _fail(f"alloc: {exc.strerror or exc}")
        if hold:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            while True:
                signal.pause()


@main.command()
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(0, MAX_ID))
@click.pass_context
def free(ctx: click.Context, ids: tuple[int, ...]) -> None:
    """Free IOASIDs through /dev/ioasid as this process.

    The user API frees only the caller's own IOASIDs: a fresh process owns none, so this shows
    the ownership rule (the fixed profile answers EACCES or ENOENT, v4 answers success and frees
    nothing). Every ID is tried; exit status 1 if one failed.
    """
    failed = False
    with _open(ctx) as dev:
        for ioasid in ids:
            try:
                dev.free(ioasid)
            except OSError as exc:
                click.echo(f"ioasidctl: free {ioasid}: {exc.strerror or exc}", err=True)
                failed = True
    if failed:
        raise SystemExit(1)


main.add_command(experiments.experiment)
