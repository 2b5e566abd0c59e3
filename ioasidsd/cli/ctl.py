"""``ioasidctl``: the administrator's command line.

It finds the daemon by ``--runtime-dir``, else ``$IOASIDS_RUNTIME_DIR``, else ``/run/ioasidsd``,
and talks to it through the control API (``RUNTIME_DIR/control.sock``). Every failure is one line
on stderr and exit status 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ioasidsd.daemon.control import ControlClient, ControlError
from ioasidsd.daemon.runtime import CONTROL_SOCKET

DEFAULT_RUNTIME_DIR = "/run/ioasidsd"


@click.group()
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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return "".join(parts)


def format_status(status: dict[str, Any]) -> str:
    """The human form of a status reply."""
    quirks = ", ".join(status["quirks"]) or "none"
    knobs = " ".join(f"{k}={v}" for k, v in status["knobs"].items()
                     if k != "profile" and not isinstance(v, bool))
    reserved = status["capacity"] - status["available"]
    tracking = status["tracking"]
    state = status["state"]
    lines = [
        ("daemon", f"pid {status['pid']}, version {status['version']}, "
                   f"up {_duration(status['uptime'])}"),
        ("profile", f"{status['profile']} (quirks on: {quirks})"),
        ("knobs", knobs),
        ("capacity", f"{status['capacity']}, available {status['available']} "
                     f"({reserved} reserved or in use)"),
        ("cgroups", str(status["cgroups"])),
        ("processes", str(status["processes"])),
        ("IOASIDs", f"{status['ioasids']} in {status['sets']} set"
                    f"{'' if status['sets'] == 1 else 's'}"),
        ("tracking", f"{tracking['mode']}: {tracking['detail']}"),
        ("mount", status["mount"]),
        ("state", f"{state['path']} (synchronous={state['synchronous']})"
                  + (f", NOT SAVED: {state['error']}" if state.get("error") else "")),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


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
