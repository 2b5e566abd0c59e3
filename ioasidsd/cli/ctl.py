"""``ioasidctl``: the administrator's command line."""

from __future__ import annotations

import os
import signal
from typing import Any, NoReturn

import click

from ioasidsd.userapi.client import MAX_ID, RUNTIME_DIR_ENV, IoasidClient, runtime_dir
from ioasidsd.userapi.protocol import SOCKET_NAME


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
def main() -> None:
    """ioasidctl: inspect and drive a running ioasidsd."""


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


_runtime_option = click.option(
    "--runtime-dir", envvar=RUNTIME_DIR_ENV, default=None, metavar="DIR",
    help=f"The daemon's runtime directory [env {RUNTIME_DIR_ENV}; default /run/ioasidsd].")


def _open(runtime: str | None) -> IoasidClient:
    """Open the daemon's /dev/ioasid for this process, or fail with one line."""
    try:
        return IoasidClient.open(runtime)
    except FileNotFoundError:
        _fail(f"no daemon: {os.path.join(runtime_dir(runtime), SOCKET_NAME)} does not exist")
    except ConnectionRefusedError:
        _fail(f"no daemon listening on {os.path.join(runtime_dir(runtime), SOCKET_NAME)}")
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
@_runtime_option
def alloc(count: int, id_range: tuple[int, int], batch: bool, hold: bool,
          runtime_dir: str | None) -> None:
    """Allocate IOASIDs for this process through /dev/ioasid; print them one per line.

    They are charged to this process's cgroup and freed when it exits, so without --hold they
    are freed again right after printing. One ALLOC per ID unless --batch; the first refusal
    ends the command with its errno's message and exit status 1.
    """
    lo, hi = id_range
    dev = _open(runtime_dir)
    with dev:
        try:
            if batch:
                for ioasid in dev.alloc_batch(count, lo, hi):
                    click.echo(ioasid)
            else:
                for _ in range(count):
                    click.echo(dev.alloc(lo, hi))
        except OSError as exc:
            _fail(f"alloc: {exc.strerror}")
        if hold:
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            while True:
                signal.pause()


@main.command()
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(0, MAX_ID))
@_runtime_option
def free(ids: tuple[int, ...], runtime_dir: str | None) -> None:
    """Free IOASIDs through /dev/ioasid as this process.

    The user API frees only the caller's own IOASIDs: a fresh process owns none, so this shows
    the ownership rule (the fixed profile answers EACCES or ENOENT, v4 answers success and frees
    nothing). Every ID is tried; exit status 1 if one failed.
    """
    failed = False
    with _open(runtime_dir) as dev:
        for ioasid in ids:
            try:
                dev.free(ioasid)
            except OSError as exc:
                click.echo(f"ioasidctl: free {ioasid}: {exc.strerror}", err=True)
                failed = True
    if failed:
        raise SystemExit(1)
