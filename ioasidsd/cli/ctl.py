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

from ioasidsd.daemon.control import ControlClient, ControlError
from ioasidsd.daemon.runtime import CONTROL_SOCKET
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
    unfolded = f", {state['unfolded']} changes in the journal" if state.get("unfolded") else ""
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
        ("tracking", _tracking_line(tracking)),
        ("mount", status["mount"]),
        *([("user API", f"{status['userapi']['socket']}, "
                        f"{status['userapi']['connections']} open")]
          if "userapi" in status else []),
        *([("VT-d", _vtd_line(status["vtd"]))] if "vtd" in status else []),
        ("state", f"{state['path']} (synchronous={state['synchronous']}{unfolded})"
                  + (f", ERROR: {state['error']}" if state.get("error") else "")),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def _tracking_line(tracking: dict[str, Any]) -> str:
    line = f"{tracking['mode']}: {tracking['detail']}"
    if tracking.get("state") == "degraded":
        line += f"; DEGRADED: {tracking.get('reason')}"
    orphans = tracking.get("orphans")
    if orphans:
        line += (f"; {orphans} process{'' if orphans == 1 else 'es'} of unknown origin "
                 f"(unplaced = {tracking.get('unplaced')})")
    return line


def _vtd_line(vtd: dict[str, Any]) -> str:
    mode = (f"scalable mode, {vtd['pasid_max']} PASIDs" if vtd["scalable_mode"]
            else "scalable mode off (no PASID binds)")
    bound = vtd["bound_pasids"]
    return (f"{', '.join(vtd['units'])}, {vtd['devices']} devices, {mode}, "
            f"{bound} bound PASID{'' if bound == 1 else 's'}")


def _flags(row: dict[str, Any], names: tuple[str, ...]) -> str:
    return ", ".join(name.upper() for name in names if row.get(name))


_HEX_FIELDS = frozenset({"addr", "qw0", "qw1", "value", "pgd", "gpgd"})


def _fields(event: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:#x}" if k in _HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool)
        else f"{k}={v}" for k, v in event.items() if k not in ("seq", "kind"))


def format_vtd(snap: dict[str, Any]) -> str:
    """The human form of a ``vtd`` reply (``VtdDriver.snapshot``). A filtered reply (a caller
    other than root) starts with one line saying that only the caller's processes are shown."""
    host = snap["host_set"]
    lines: list[tuple[str, str]] = []
    if snap.get("filtered"):
        lines.append(("shown", f"only the processes of uid {snap.get('viewer_uid', '?')} "
                               f"(other users' bindings, tear-downs and trace events hidden)"))
    lines.append(("VT-d", f"profile {snap['profile']}, "
                      + (f"scalable mode, {snap['pasid_max']} PASIDs" if snap["scalable_mode"]
                         else "scalable mode off")
                      + ("" if host is None else
                         f", host set {host['id']} (quota {host['quota']}, "
                         f"{host['nr_ioasids']} in use)")))
    for unit in snap["units"]:
        iq, caches = unit["iq"], unit["caches"]
        lines.append((f"unit {unit['name']}",
                       f"version {unit['version']}, PSS {unit['caps']['pss']}, "
                       f"{unit['iq']['width']}-bit QI: {iq['processed']} descriptors processed; "
                       f"cached: {caches['context']['entries']} context, "
                       f"{caches['pasid']['entries']} PASID, {caches['iotlb']['entries']} IOTLB"))
        for teardown in unit["teardowns"]:
            lines.append(("  torn down", f"PASID {teardown['pasid']} on {teardown['bdf']}: "
                                         f"{', '.join(teardown['descriptors'])}"))
    for dev in snap["devices"]:
        table = dev.get("pasid_table")
        entries = "no PASID table" if table is None else (
            f"PASID table {table['dir_pages']}+{table['leaf_pages']} pages, "
            f"{table['present']} entries present"
            + "".join(f", {n} {kind}" for kind, n in table["present_by_pgtt"].items()))
        enabled = _flags(dev, ("pasid_enabled", "ats_enabled", "pri_enabled"))
        lines.append((f"device {dev['bdf']}",
                       f"on {dev['unit']}, {dev['pasid_bits']}-bit PASIDs, "
                       f"{enabled.replace('_ENABLED', '') or 'nothing'} enabled; {entries}"))
    for bind in snap["bindings"]:
        devices = ", ".join(f"{d['bdf']} (DID {d['did']})" for d in bind["devices"])
        guest = "" if bind["gpasid"] is None else f" as guest PASID {bind['gpasid']}"
        queued = ", cleanup queued" if bind["cleanup_queued"] else ""
        lines.append((f"PASID {bind['pasid']}",
                      f"{bind['kind']}{guest}, owner pid {bind['owner_pid']}: {devices}{queued}"))
    if not snap["bindings"]:
        lines.append(("bindings", "none"))
    for section, values in snap["counters"]["total"].items():
        text = ", ".join(f"{name} {value}" for name, value in values.items())
        lines.append((f"counters {section}", text))
    width = max(len(name) for name, _ in lines)
    out = [f"{name:<{width}}  {value}" for name, value in lines]
    if snap["trace"]:
        if snap.get("filtered"):
            out.append(f"last {len(snap['trace'])} trace events about the bindings shown "
                       f"({snap['trace_seq']} in all):")
        else:
            out.append(f"last {len(snap['trace'])} of {snap['trace_seq']} trace events:")
        out.extend(f"  #{e['seq']} {e['kind']} {_fields(e)}" for e in snap["trace"])
    return "\n".join(out)


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
