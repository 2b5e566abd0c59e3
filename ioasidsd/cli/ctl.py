"""``ioasidctl``: the administrator's command line.

It finds the daemon by ``--runtime-dir``, else ``$IOASIDS_RUNTIME_DIR``, else ``/run/ioasidsd``,
and talks to it through the control API (``RUNTIME_DIR/control.sock``) for what only the daemon
knows (``status``, ``vtd``, ``tree``, ``top``, ``which``, ``ids``, ``events``, ``slice``,
``set-property``, ``daemon-reload``, and the scope ``run`` starts in). Verbs that read or
change cgroup files (``get``, ``set``, ``create``, ``delete``, ``exec``, ``classify``,
``snapshot``, ``restore``) work on the mounted hierarchy (``--mount``, else
``$IOASIDS_MOUNT``, else the mount the daemon reports), so that a user may do exactly what the
same user could do with ``echo``, ``mkdir`` and ``rmdir`` there.

Paths are cgroup paths from the hierarchy's root (``/vms/gold``, ``vms/gold`` or
``ioasids:/vms/gold``). Exit status: 0 done; 1 refused or the daemon unreachable (one line on
stderr naming the errno and its cause); 2 bad usage; ``exec`` and ``run`` exit with their
command's status.
No traceback reaches a user. Modules beyond click are imported by the verbs that need them,
so that a verb starts about as fast as click itself.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:  # pathlib and the clients are imported by the verbs that use them
    from collections.abc import Iterator
    from pathlib import Path

    from ioasidsd.control.client import ControlClient
    from ioasidsd.userapi.client import IoasidClient

DEFAULT_RUNTIME_DIR = "/run/ioasidsd"
CONTROLLER = "ioasids"
MAX_ID = (1 << 31) - 1  # ioasidsd.userapi.client.MAX_ID, kept here to import it lazily


class _OneLineErrors(click.Group):
    """Usage errors as one line on stderr (exit status 2), not click's usage block; bare
    ``ioasidctl`` prints the usage (exit status 0). ``lazy_commands`` maps a command's name to
    ``module:attribute``, imported only when that command runs or is listed (``wrap`` and
    ``experiment`` and what they import cost a verb's start-up otherwise)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: dict[str, str] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = self.lazy_commands.get(cmd_name)
        if where is None:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, _, name = where.partition(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command)
        return command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as exc:
            click.echo(f"ioasidctl: {exc.format_message()}", err=True)
            raise SystemExit(exc.exit_code) from None
        except click.Abort:
            raise SystemExit(1) from None
        except BrokenPipeError:  # `ioasidctl tree | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None
        except Exception as exc:  # a bug, or a daemon whose reply this version cannot read
            if os.environ.get("IOASIDCTL_DEBUG"):
                raise
            click.echo(f"ioasidctl: unexpected error: {type(exc).__name__}: {exc} "
                       f"(IOASIDCTL_DEBUG=1 shows where)", err=True)
            raise SystemExit(1) from None
        raise SystemExit(code if isinstance(code, int) else 0)


class Env:
    """What every verb shares: the daemon's control client and where the hierarchy is."""

    def __init__(self, runtime_dir: str, mount: str | None) -> None:
        self.runtime_dir = runtime_dir
        self._mount = mount
        self._client: ControlClient | None = None

    @property
    def client(self) -> ControlClient:
        if self._client is None:
            from ioasidsd.control.client import ControlClient
            from ioasidsd.control.protocol import SOCKET_NAME

            self._client = ControlClient(os.path.join(self.runtime_dir, SOCKET_NAME))
        return self._client

    def call(self, verb: str, **args: Any) -> Any:
        """One control request; a refusal or an absent daemon ends the command (exit 1)."""
        from ioasidsd.control.client import ControlError

        try:
            return self.client.call(verb, **args)
        except ControlError as exc:
            name = "" if exc.error in ("ENOTCONN", "EPROTO") else f" ({exc.error})"
            fail(f"{verb.replace('_', '-')}: {exc}{name}")  # set_property: set-property

    @property
    def mount(self) -> Path:
        """The hierarchy's mount point: ``--mount``, else the daemon's."""
        from pathlib import Path

        if self._mount is None:
            from ioasidsd.control.client import ControlError

            try:
                self._mount = str(self.client.call("status")["mount"])
            except ControlError as exc:
                fail(f"cannot ask the daemon where the hierarchy is mounted: {exc} "
                     f"(--mount names it)")
        return Path(self._mount)

    def dir(self, path: str) -> Path:
        """The directory of cgroup ``path`` on the mount."""
        return self.mount / path.lstrip("/") if path != "/" else self.mount


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    click.echo(f"ioasidctl: {message}", err=True)
    raise SystemExit(1)


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, "EIO")


def oserror(what: str, exc: OSError, cause: str | None = None) -> str:
    """``what: strerror (ENAME[: cause])``, the one line of a refused operation."""
    text = exc.strerror or os.strerror(exc.errno or errno.EIO)
    return f"{what}: {text} ({_errname(exc)}{': ' + cause if cause else ''})"


def cgroup_path(text: str) -> str:
    """A cgroup path as written (``/a/b``, ``a/b``, ``ioasids:/a/b``) in its canonical form
    (``/a/b``); ``click.BadParameter`` (exit status 2) for another controller or a name that
    is not a cgroup's."""
    controller, sep, rest = text.partition(":")
    if sep:
        if controller not in (CONTROLLER, "*"):
            raise click.BadParameter(f"{text!r}: the hierarchy has only the {CONTROLLER} "
                                     f"controller")
        text = rest
    parts = [p for p in text.split("/") if p]
    if "\0" in text or any(p in (".", "..") for p in parts):
        raise click.BadParameter(f"{text!r} is not a cgroup path")
    return "/" + "/".join(parts)


def _paths(_ctx: click.Context, _param: click.Parameter, values: Any) -> Any:
    if values is None:
        return None
    if isinstance(values, str):
        return cgroup_path(values)
    return tuple((value, cgroup_path(value)) for value in values)


def _complete_path(ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of cgroup paths, from the mount (nothing if it cannot be read)."""
    from click.shell_completion import CompletionItem

    try:
        env = Env(ctx.find_root().params.get("runtime_dir") or DEFAULT_RUNTIME_DIR,
                  ctx.find_root().params.get("mount"))
        prefix = incomplete.removeprefix(f"{CONTROLLER}:")
        head, _, _ = prefix.rpartition("/")
        base = env.dir("/" + head.strip("/"))
        names = sorted(e.name for e in os.scandir(base) if e.is_dir())
    except (OSError, SystemExit):
        return []
    lead = incomplete[: len(incomplete) - len(prefix)] + (head + "/" if head or
                                                            prefix.startswith("/") else "")
    return [CompletionItem(lead + name) for name in names
            if (lead + name).startswith(incomplete)]


def _colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _print_json(value: Any) -> None:
    import json

    click.echo(json.dumps(value, indent=2, sort_keys=True))


@click.group(cls=_OneLineErrors, invoke_without_command=True)
@click.version_option(package_name="ioasids")
@click.option("--runtime-dir", envvar="IOASIDS_RUNTIME_DIR", default=DEFAULT_RUNTIME_DIR,
              show_default=True, show_envvar=True, type=click.Path(file_okay=False),
              help="The runtime directory of the daemon to talk to.")
@click.option("--mount", envvar="IOASIDS_MOUNT", default=None, show_envvar=True,
              type=click.Path(file_okay=False),
              help="Where the hierarchy is mounted.  [default: the daemon's mount]")
@click.pass_context
def main(ctx: click.Context, runtime_dir: str, mount: str | None) -> None:
    """ioasidctl: inspect and drive a running ioasidsd.

    Paths are cgroup paths from the hierarchy's root: /vms/gold, vms/gold or
    ioasids:/vms/gold. Exit status: 0 done, 1 refused or no daemon, 2 bad usage.
    """
    ctx.obj = Env(runtime_dir, mount)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(0)


# ---------------------------------------------------------------------- daemon views
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def status(env: Env, as_json: bool) -> None:
    """The daemon's pid, profile and knobs, capacity, counts and process-tracking mode."""
    result = env.call("status")
    if as_json:
        _print_json(result)
    else:
        from ioasidsd.cli.render import format_status

        click.echo(format_status(result))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the whole snapshot as JSON.")
@click.option("--events", "-e", default=20, show_default=True, type=click.IntRange(0, 4096),
              help="How many of the last trace events to show.")
@click.pass_obj
def vtd(env: Env, as_json: bool, events: int) -> None:
    """The simulated VT-d units: devices and their PASID tables, bound PASIDs, recent
    tear-downs, counters and the last trace events.

    A user other than root sees only the bindings of its own processes (real or effective uid
    its uid) and the tear-downs and trace events about them; --json then has "filtered": true.
    """
    result = env.call("vtd", events=events)
    if as_json:
        _print_json(result)
    else:
        from ioasidsd.cli.render import format_vtd

        click.echo(format_vtd(result))


@main.command()
@click.argument("path", required=False, default="/", callback=_paths,
                shell_complete=_complete_path)
@click.option("--all", "-a", "show_all", is_flag=True, help="Show empty cgroups too.")
@click.option("--json", "as_json", is_flag=True, help="Print the tree as JSON.")
@click.pass_obj
def tree(env: Env, path: str, show_all: bool, as_json: bool) -> None:
    """The hierarchy below PATH (default /) with its member processes, as systemd-cgls shows
    a cgroup tree: each cgroup with IOASIDs current/max; one over its limit (a process moved in
    can bring its IOASIDs above the limit) is marked "over". Cgroups without processes in or
    below them are hidden unless --all."""
    result = env.call("tree", path=path, all=show_all)
    if as_json:
        _print_json(result)
        return
    from ioasidsd.cli.render import format_tree

    click.echo(format_tree(result, terminal=sys.stdout.isatty(), colour=_colour()))


ORDERS = ("path", "current", "max", "peak", "events", "procs")


@main.command()
@click.argument("path", required=False, default="/", callback=_paths,
                shell_complete=_complete_path)
@click.option("-b", "--batch", is_flag=True, help="Plain iterations, no screen refresh.")
@click.option("-n", "--iterations", type=click.IntRange(1), default=None,
              help="Stop after N iterations.  [default: 1 when not on a terminal]")
@click.option("-d", "--delay", type=click.FloatRange(0.1, 3600), default=1.0,
              show_default=True, help="Seconds between iterations.")
@click.option("--depth", type=click.IntRange(0, 65536), default=3, show_default=True,
              help="Levels below PATH shown.")
@click.option("--order", type=click.Choice(ORDERS), default="path", show_default=True,
              help="Sort key (numbers largest first).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per iteration.")
@click.pass_obj
def top(env: Env, path: str, batch: bool, iterations: int | None, delay: float, depth: int,
        order: str, as_json: bool) -> None:
    """Cgroups by IOASID use, as systemd-cgtop shows them: Control Group, Procs (processes in
    it and below it), IOASIDs, Max, Peak, Events. On a terminal the view refreshes every
    --delay seconds (keys: p path, c current, m max, k peak, e events, t procs, q quit);
    not on a terminal, or with -b, rows are printed without a header, one iteration unless
    -n. One control request per iteration."""
    from ioasidsd.cli import render

    live = sys.stdout.isatty() and not batch and not as_json
    if iterations is None and not live:
        iterations = 1
    if live:
        from ioasidsd.cli.live import run_top
        from ioasidsd.control.client import ControlError

        try:
            run_top(lambda: env.client.call("top", path=path, depth=depth), order=order,
                    delay=delay, iterations=iterations)
        except ControlError as exc:
            fail(f"top: {exc}")
        return
    import time

    done = 0
    while True:
        result = env.call("top", path=path, depth=depth)
        if as_json:
            import json

            click.echo(json.dumps(result, sort_keys=True))
        else:
            click.echo(render.format_top(result, order=order, header=False))
        done += 1
        if iterations is not None and done >= iterations:
            return
        sys.stdout.flush()
        time.sleep(delay)


@main.command()
@click.argument("pids", nargs=-1, required=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@click.pass_obj
def which(env: Env, pids: tuple[int, ...], as_json: bool) -> None:
    """The cgroup of each process, as /proc/PID/cgroup tells it for a kernel hierarchy: one
    line "PID PATH" per process."""
    result = env.call("which", pids=list(pids))
    if as_json:
        _print_json(result)
        return
    for row in result["processes"]:
        click.echo(f"{row['pid']} {row['cgroup']}")


@main.command()
@click.argument("path", required=False, default=None, callback=_paths,
                shell_complete=_complete_path)
@click.option("--pid", type=click.IntRange(1), default=None,
              help="Only the IOASIDs of this process.")
@click.option("--json", "as_json", is_flag=True, help="Print the IOASIDs as JSON.")
@click.pass_obj
def ids(env: Env, path: str | None, pid: int | None, as_json: bool) -> None:
    """Live IOASIDs: ID, state, set, owner pid, charged cgroup, SPID and VT-d bindings; those
    charged to PATH or below it if given. A user other than root sees only those of its own
    processes."""
    args: dict[str, Any] = {}
    if path is not None:
        args["path"] = path
    if pid is not None:
        args["pid"] = pid
    result = env.call("ids", **args)
    if as_json:
        _print_json(result)
    else:
        from ioasidsd.cli.render import format_ids

        click.echo(format_ids(result, terminal=sys.stdout.isatty()))


@main.command()
@click.argument("path", required=False, default="/", callback=_paths,
                shell_complete=_complete_path)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new refusals as they come.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (with --follow: one entry per line).")
@click.pass_obj
def events(env: Env, path: str, follow: bool, as_json: bool) -> None:
    """The refusal log: the refused /dev/ioasid requests of PATH and below it (time, pid,
    command, uid, the cgroup that asked, the level whose limit refused, errno, request), the
    last ones of each cgroup (the daemon's [events] ring, 256 by default). A user other than
    root sees only its own. --follow polls the daemon for new ones until interrupted."""
    from ioasidsd.cli.render import format_event

    result = env.call("events", path=path)
    if as_json and not follow:
        _print_json(result)
        return
    if not follow:
        for item in result["events"]:
            click.echo(format_event(item))
        return
    import json
    import time

    last = result["last_seq"]
    shown = result["events"]
    try:
        while True:
            for item in shown:
                click.echo(json.dumps(item, sort_keys=True) if as_json else format_event(item))
            sys.stdout.flush()
            time.sleep(0.5)
            result = env.call("events", path=path, after=last)
            shown, last = result["events"], result["last_seq"]
    except KeyboardInterrupt:
        return


# ---------------------------------------------------------------------- cgroup files
def _read(env: Env, path: str, name: str) -> str:
    with open(env.dir(path) / name, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _require(env: Env, shown: str, path: str) -> Path:
    """The cgroup's directory; exit status 1 naming it when it does not exist."""
    where = env.dir(path)
    if not where.is_dir():
        if not env.mount.is_dir():
            fail(f"{env.mount}: the hierarchy is not mounted there (is ioasidsd running?)")
        fail(f"{shown}: no such cgroup (ENOENT)")
    return where


def _controller_files(where: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(where)
                  if e.is_file() and e.name.startswith(CONTROLLER + "."))


@main.command()
@click.option("-r", "names", multiple=True, metavar="NAME",
              help="A control file to show (repeatable).  [default: every ioasids.* file]")
@click.option("-n", "no_header", is_flag=True, help="No cgroup headers.")
@click.option("-v", "values_only", is_flag=True, help="Values only, without names.")
@click.option("--json", "as_json", is_flag=True, help="Print the values as JSON.")
@click.argument("paths", nargs=-1, required=True, callback=_paths,
                shell_complete=_complete_path)
@click.pass_obj
def get(env: Env, names: tuple[str, ...], no_header: bool, values_only: bool, as_json: bool,
        paths: tuple[tuple[str, str], ...]) -> None:
    """Control-file values of cgroups, in cgget's layout: "PATH:" then "name: value" lines
    (a value's further lines start with a tab), a blank line after each cgroup."""
    for name in names:
        if "/" in name or name in ("", ".", ".."):
            raise click.BadParameter(f"{name!r} is not a control file", param_hint="-r")
    out: list[str] = []
    found: list[dict[str, Any]] = []
    for shown, path in paths:
        where = _require(env, shown, path)
        wanted = list(names) or _controller_files(where)
        values: dict[str, str] = {}
        for name in wanted:
            try:
                values[name] = _read(env, path, name).rstrip("\n")
            except FileNotFoundError:
                fail(f"{shown}: no control file {name} (ENOENT)")
            except OSError as exc:
                fail(oserror(f"{shown}: {name}", exc))
        found.append({"path": path, "values": values})
        if not no_header:
            out.append(f"{shown}:")
        for name, value in values.items():
            text = value.replace("\n", "\n\t")
            out.append(text if values_only else f"{name}: {text}")
        if not no_header:
            out.append("")
    if as_json:
        _print_json({"schema": 1, "cgroups": found})
    else:
        click.echo("\n".join(out))


def capacity_cause(env: Env) -> str | None:
    """``capacity N, reserved R`` from the root's ``ioasids.capacity``, if readable."""
    try:
        fields = dict(line.split() for line in _read(env, "/", "ioasids.capacity").splitlines())
        capacity, available = int(fields["capacity"]), int(fields["available"])
    except (OSError, ValueError, KeyError):
        return None
    return f"capacity {capacity}, reserved {capacity - available}"


def _write(env: Env, shown: str, path: str, name: str, value: str) -> None:
    """Write one control file; exit status 1 with the errno and its cause when refused."""
    try:
        fd = os.open(env.dir(path) / name, os.O_WRONLY)
    except FileNotFoundError:
        fail(f"set {shown}: no control file {name} (ENOENT)")
    except OSError as exc:
        fail(oserror(f"set {shown}: {name}", exc))
    try:
        os.write(fd, value.encode(errors="surrogateescape") + b"\n")
    except OSError as exc:
        cause = None
        if exc.errno == errno.ENOSPC and name == f"{CONTROLLER}.max":
            cause = capacity_cause(env)
        elif exc.errno == errno.EINVAL and name == f"{CONTROLLER}.max":
            cause = f"{value!r} is not a number or max"
        elif exc.errno == errno.ERANGE:
            cause = f"{value!r} is out of range"
        fail(oserror(f"set {shown}: {name}", exc, cause))
    finally:
        os.close(fd)


def _descendants(where: Path, path: str) -> Iterator[str]:
    """``path`` and the cgroups below it, parents first."""
    yield path
    try:
        names = sorted(e.name for e in os.scandir(where) if e.is_dir(follow_symlinks=False))
    except OSError:
        return
    for name in names:
        yield from _descendants(where / name, f"{path.rstrip('/')}/{name}")


def _check_values(env: Env, targets: list[tuple[str, str]], pairs: list[tuple[str, str]],
                  ) -> None:
    """Refuse, before anything is written, a file a target lacks and a limit the kernel's
    parser would refuse (the value's ``EINVAL`` or ``ERANGE``), so that a bad ``set`` changes
    nothing."""
    from ioasidsd.model.errors import IoasidError
    from ioasidsd.model.formats import parse_limit

    for name, value in pairs:
        if name == f"{CONTROLLER}.max":
            try:
                parse_limit(value)
            except IoasidError as exc:
                code = exc.errno or errno.EINVAL
                fail(oserror(f"set {targets[0][0]}: {name}", OSError(code, os.strerror(code)),
                             f"{value!r} is not a number or max" if code == errno.EINVAL
                             else f"{value!r} is out of range"))
        for shown, path in targets:
            if not (env.dir(path) / name).is_file():
                fail(f"set {shown}: no control file {name} (ENOENT)")


COPIED = (f"{CONTROLLER}.max", "notify_on_release", "cgroup.clone_children")
"""What ``set --copy-from`` copies: the writable files of a child cgroup."""


@main.command(name="set")
@click.option("-r", "assignments", multiple=True, metavar="NAME=VALUE",
              help="A control file and the value to write (repeatable).")
@click.option("-R", "recursive", is_flag=True, help="Also every cgroup below each PATH.")
@click.option("--copy-from", "source", default=None, callback=_paths, metavar="SRC",
              shell_complete=_complete_path, help="Copy the control values of SRC.")
@click.argument("paths", nargs=-1, required=True, callback=_paths,
                shell_complete=_complete_path)
@click.pass_obj
def set_(env: Env, assignments: tuple[str, ...], recursive: bool, source: str | None,
         paths: tuple[tuple[str, str], ...]) -> None:
    """Write control files, as cgset does: -r NAME=VALUE for each PATH (and, with -R, every
    cgroup below it), or --copy-from SRC to give them SRC's ioasids.max, notify_on_release
    and cgroup.clone_children. The first refusal stops with its errno and cause."""
    if bool(assignments) == (source is not None):
        raise click.UsageError("give either -r NAME=VALUE or --copy-from SRC")
    pairs: list[tuple[str, str]] = []
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name or "/" in name:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="-r")
        pairs.append((name, value))
    if source is not None:
        _require(env, source, source)
        for name in COPIED:
            try:
                pairs.append((name, _read(env, source, name).rstrip("\n")))
            except OSError as exc:
                fail(oserror(f"set --copy-from {source}: {name}", exc))
    targets: list[tuple[str, str]] = []
    for shown, path in paths:
        where = _require(env, shown, path)
        if recursive:
            targets.extend((sub, sub) for sub in _descendants(where, path))
        else:
            targets.append((shown, path))
    _check_values(env, targets, pairs)
    for shown, path in targets:
        for name, value in pairs:
            _write(env, shown, path, name, value)


@main.command()
@click.option("-p", "parents", is_flag=True,
              help="Make missing parents; an existing cgroup is no error (as cgcreate).")
@click.argument("paths", nargs=-1, required=True, callback=_paths,
                shell_complete=_complete_path)
@click.pass_obj
def create(env: Env, parents: bool, paths: tuple[tuple[str, str], ...]) -> None:
    """Create cgroups, as mkdir does on the mount (with -p, as cgcreate: parents too)."""
    if not env.mount.is_dir():
        fail(f"{env.mount}: the hierarchy is not mounted there (is ioasidsd running?)")
    for shown, path in paths:
        if path == "/":
            if parents:
                continue
            fail(f"create {shown}: the root exists (EEXIST)")
        parts = path.strip("/").split("/")
        steps = [("/" + "/".join(parts[:i])) for i in range(1, len(parts) + 1)]
        for step in steps if parents else steps[-1:]:
            try:
                os.mkdir(env.dir(step))
            except FileExistsError:
                if not parents:
                    fail(f"create {shown}: the cgroup exists (EEXIST)")
            except FileNotFoundError:
                fail(f"create {shown}: its parent does not exist (ENOENT; -p makes it)")
            except OSError as exc:
                fail(oserror(f"create {shown}", exc))


def _procs(env: Env, path: str) -> list[int]:
    try:
        return [int(p) for p in _read(env, path, "cgroup.procs").split()]
    except (OSError, ValueError):
        return []


def _remove(env: Env, shown: str, path: str) -> None:
    """Move ``path``'s processes to its parent, then remove it, as cgdelete does."""
    parent = path.rpartition("/")[0] or "/"
    for pid in _procs(env, path):
        try:
            with open(env.dir(parent) / "cgroup.procs", "w") as f:
                f.write(str(pid))
        except ProcessLookupError:
            continue  # it exited meanwhile
        except OSError as exc:
            fail(oserror(f"delete {shown}: moving process {pid} to {parent}", exc))
    try:
        os.rmdir(env.dir(path))
    except FileNotFoundError:
        fail(f"delete {shown}: no such cgroup (ENOENT)")
    except OSError as exc:
        cause = None
        if exc.errno == errno.EBUSY:
            where = env.dir(path)
            children = sorted(e.name for e in os.scandir(where) if e.is_dir()) \
                if where.is_dir() else []
            left = _procs(env, path)
            if children:
                cause = (f"it still has child cgroup{'s' if len(children) > 1 else ''} "
                         f"{', '.join(children)} (delete -r removes them)")
            elif left:
                cause = f"processes {' '.join(map(str, left))} are still in it"
        fail(oserror(f"delete {shown}", exc, cause))


@main.command()
@click.option("-r", "recursive", is_flag=True, help="Remove the cgroups below too, deepest first.")
@click.argument("paths", nargs=-1, required=True, callback=_paths,
                shell_complete=_complete_path)
@click.pass_obj
def delete(env: Env, recursive: bool, paths: tuple[tuple[str, str], ...]) -> None:
    """Remove cgroups, as cgdelete does: member processes move to the parent first; -r removes
    the cgroups below depth-first (the root itself is kept)."""
    for shown, path in paths:
        where = _require(env, shown, path)
        if path == "/" and not recursive:
            fail(f"delete {shown}: the root cannot be removed (EBUSY)")
        if recursive:
            for sub in reversed(list(_descendants(where, path))):
                if sub != "/":
                    _remove(env, sub, sub)
        else:
            _remove(env, shown, path)


def _join(env: Env, shown: str, path: str, pid: int) -> None:
    """Write ``pid`` (0: this process) into the cgroup's ``cgroup.procs``. When the daemon
    refuses because its membership follows the host's hierarchy (systemd's), the process is
    moved there instead, into the cgroup of the same path (made if missing), as cgclassify
    does on a hierarchy mounted together with another."""
    try:
        with open(env.dir(path) / "cgroup.procs", "w") as f:
            f.write(str(pid))
    except FileNotFoundError:
        fail(f"{shown}: no such cgroup (ENOENT)")
    except OSError as exc:
        followed = _followed(env) if exc.errno == errno.EPERM else None
        if followed is not None:
            _join_host(followed, shown, path, pid)
            return
        what = "this process" if pid == 0 else f"process {pid}"
        cause = {errno.ESRCH: "no such process",
                 errno.EACCES: "it belongs to another user",
                 errno.EPERM: "the daemon refuses moves here"}.get(exc.errno or 0)
        fail(oserror(f"moving {what} to {shown}", exc, cause))


def _followed(env: Env) -> Path | None:
    """The mount of the host's hierarchy the daemon's membership follows; ``None`` if it
    follows none (or cannot be asked)."""
    from pathlib import Path

    from ioasidsd.control.client import ControlError

    try:
        followed = env.client.call("status").get("tracking", {}).get("followed")
    except ControlError:
        return None
    return Path(followed["mount"]) if followed else None


def _join_host(mount: Path, shown: str, path: str, pid: int) -> None:
    """Move ``pid`` (0: this process) into the cgroup at ``path`` of the host's hierarchy
    mounted on ``mount``, made (with its parents) if missing."""
    where = mount / path.strip("/")
    what = "this process" if pid == 0 else f"process {pid}"
    try:
        where.mkdir(parents=True, exist_ok=True)
        with open(where / "cgroup.procs", "w") as f:
            f.write(str(pid))
    except OSError as exc:
        cause = {errno.ESRCH: "no such process",
                 errno.EACCES: "only root may move processes in the host's hierarchy"}.get(
            exc.errno or 0)
        fail(oserror(f"moving {what} to {shown} (membership follows {mount}: {where})", exc,
                     cause))


def _become(command: tuple[str, ...] | list[str], verb: str) -> NoReturn:
    """Replace this process with ``command``, as a shell runs one: exit 127 when it is not
    found, 126 when it cannot be run, each with one line naming ``verb``."""
    sys.stdout.flush()
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        click.echo(f"ioasidctl: {verb}: {command[0]}: command not found", err=True)
        raise SystemExit(127) from None
    except OSError as exc:
        click.echo(f"ioasidctl: {oserror(f'{verb}: {command[0]}', exc)}", err=True)
        raise SystemExit(126) from None


@main.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("-g", "group", required=True, callback=_paths, metavar="PATH",
              shell_complete=_complete_path, help="The cgroup to run in.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(env: Env, group: str, command: tuple[str, ...]) -> None:
    """Run COMMAND as a member of the cgroup from its first instruction, as cgexec does: this
    process joins the cgroup, then becomes COMMAND. Exits with COMMAND's status (127: not
    found, 126: not executable)."""
    if not env.dir(group).is_dir():
        _require(env, group, group)
    _join(env, group, group, 0)
    _become(command, "exec")


@main.command()
@click.option("-g", "group", required=True, callback=_paths, metavar="PATH",
              shell_complete=_complete_path, help="The cgroup to move the processes to.")
@click.argument("pids", nargs=-1, required=True, type=click.IntRange(1))
@click.pass_obj
def classify(env: Env, group: str, pids: tuple[int, ...]) -> None:
    """Move processes into the cgroup, as cgclassify -g does: one that cannot be moved is
    named on a line of its own and the others are still moved (exit status 1 then)."""
    _require(env, group, group)
    failed = False
    for pid in pids:
        try:
            _join(env, group, group, pid)
        except SystemExit:  # its line is printed; carry on with the rest, as cgclassify does
            failed = True
    if failed:
        raise SystemExit(1)


# ---------------------------------------------------------------------- snapshot, restore
@main.command()
@click.option("-o", "output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output.")
@click.pass_obj
def snapshot(env: Env, output: str | None) -> None:
    """The hierarchy, its limits and flags as a TOML file (its schema: docs/cli.md), which
    restore reads back."""
    from ioasidsd.cli.snapshot import SnapshotFileError, dump, read_tree

    if not env.mount.is_dir():
        fail(f"{env.mount}: the hierarchy is not mounted there (is ioasidsd running?)")
    try:
        text = dump(read_tree(env.mount))
    except SnapshotFileError as exc:
        fail(f"snapshot: {exc}")
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w") as f:
            f.write(text)
    except OSError as exc:
        fail(oserror(f"snapshot: {output}", exc))


@main.command()
@click.option("--force", is_flag=True, help="Overwrite the values of existing cgroups too.")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_obj
def restore(env: Env, force: bool, file: str) -> None:
    """Create the cgroups a snapshot holds that are missing and write their values. All or
    nothing: where an existing cgroup has other values (unless --force), or where the daemon
    would refuse a step, nothing is changed (exit status 1)."""
    from ioasidsd.cli.snapshot import SnapshotFileError, load, plan, read_tree

    try:
        with open(file, "rb") as f:
            wanted = load(f.read())
    except OSError as exc:
        fail(oserror(f"restore: {file}", exc))
    except SnapshotFileError as exc:
        fail(f"restore: {file}: {exc}")
    if not env.mount.is_dir():
        fail(f"{env.mount}: the hierarchy is not mounted there (is ioasidsd running?)")
    from ioasidsd.control.client import ControlError

    try:  # what a new cgroup's ioasids.max reads, so that restore writes only what differs
        new_max = str(env.client.call("status")["knobs"].get("new_cgroup_max", "max"))
    except ControlError as exc:
        fail(f"restore: cannot ask the daemon what a new cgroup holds: {exc} (--runtime-dir "
             f"names it); nothing changed")
    try:
        steps, conflicts = plan(wanted, read_tree(env.mount), new_max)
    except SnapshotFileError as exc:
        fail(f"restore: {exc}")
    if conflicts and not force:
        fail(f"restore: {len(conflicts)} existing value{'s' if len(conflicts) > 1 else ''} "
             f"differ ({conflicts[0]}{', ...' if len(conflicts) > 1 else ''}); nothing "
             f"changed (--force overwrites them)")
    from ioasidsd.cli.restore import apply, rehearse

    rehearse(env, steps)
    apply(env, steps)


# ---------------------------------------------------------------------- slices
@main.group(name="slice")
def slice_() -> None:
    """Slices: unit files in systemd's syntax whose names give their cgroups
    (tenant-a.slice is /tenant.slice/tenant-a.slice) and whose IOASIDsMax= their limits."""


@slice_.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print the slices as JSON.")
@click.pass_obj
def slice_list(env: Env, as_json: bool) -> None:
    """Every slice the daemon knows: unit, load and active state, IOASIDs in use, the
    cgroup's limit, the configured IOASIDsMax= and the cgroup; then why each failed one
    failed."""
    result = env.call("slice_list")
    if as_json:
        _print_json(result)
    else:
        from ioasidsd.cli.render import format_slices

        click.echo(format_slices(result))


@slice_.command(name="status")
@click.argument("unit")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.pass_obj
def slice_status(env: Env, unit: str, as_json: bool) -> None:
    """One slice: its unit file and drop-ins, its state (and why it failed), its cgroup,
    the configured and effective limit, IOASIDs in use and its processes."""
    result = env.call("slice_status", unit=unit)
    if as_json:
        _print_json(result)
    else:
        from ioasidsd.cli.render import format_slice_status

        click.echo(format_slice_status(result))


@main.command(name="set-property")
@click.option("--runtime", is_flag=True,
              help="Only until the machine reboots: the drop-in goes to the runtime control "
                   "directory.")
@click.argument("unit")
@click.argument("assignments", nargs=-1, required=True, metavar="PROPERTY=VALUE...")
@click.pass_obj
def set_property(env: Env, runtime: bool, unit: str, assignments: tuple[str, ...]) -> None:
    """Set IOASIDsMax= of a slice now and keep it, as systemctl set-property does: VALUE is
    a number, N% of the capacity, infinity, or empty to reset it to the default. The drop-in
    50-IOASIDsMax.conf goes to the persistent control directory, or with --runtime to the
    runtime one."""
    for item in assignments:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not PROPERTY=VALUE",
                                     param_hint="PROPERTY=VALUE")
    env.call("set_property", unit=unit, properties=list(assignments), runtime=runtime)


@main.command(name="daemon-reload")
@click.pass_obj
def daemon_reload(env: Env) -> None:
    """Read the daemon's configuration file and every unit file again and apply them (as
    SIGHUP does); returns once done. Slices that failed are named on stderr."""
    result = env.call("daemon_reload")
    if result.get("failed"):
        click.echo(f"ioasidctl: daemon-reload: {result['failed']} slice"
                   f"{'s' if result['failed'] > 1 else ''} failed (ioasidctl slice list "
                   f"shows why)", err=True)


@main.command(name="run", context_settings={"ignore_unknown_options": True,
                                            "allow_interspersed_args": False})
@click.option("--slice", "slice_name", default=None, metavar="NAME.slice",
              help="The slice to run in.  [default: system.slice]")
@click.option("--scope", is_flag=True, help="Accepted for systemd-run's sake: always a scope.")
@click.option("--unit", "-u", default=None, metavar="NAME",
              help="The scope's name.  [default: run-u<N>.scope]")
@click.option("--property", "-p", "properties", multiple=True, metavar="IOASIDsMax=VALUE",
              help="The scope's limit (repeatable; the last one wins).")
@click.option("--quiet", "-q", is_flag=True, help="Do not name the scope on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def run(env: Env, slice_name: str | None, scope: bool, unit: str | None,
        properties: tuple[str, ...], quiet: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND in a new transient scope inside a slice, as systemd-run --scope does: its
    IOASIDs are charged to the scope and the slices above it. The scope is removed when its
    last process exits. Exits with COMMAND's status (127: not found, 126: not executable)."""
    result = env.call("run", slice=slice_name, unit=unit, properties=list(properties))
    cgroup = result["cgroup"]
    if not env.mount.is_dir():
        fail(f"{env.mount}: the hierarchy is not mounted there (is ioasidsd running?)")
    try:
        os.mkdir(env.dir(cgroup))
    except FileExistsError:
        fail(f"run: {result['unit']}: a scope of that name exists (EEXIST)")
    except OSError as exc:
        fail(oserror(f"run: cannot create the scope {cgroup}", exc))
    try:
        wanted = result["ioasids_max"]
        if _read(env, cgroup, f"{CONTROLLER}.max").strip() != wanted:
            _write(env, cgroup, cgroup, f"{CONTROLLER}.max", wanted)
        _join(env, cgroup, cgroup, 0)
    except (SystemExit, OSError) as exc:
        import contextlib

        with contextlib.suppress(OSError):  # the scope, empty, goes as it came
            os.rmdir(env.dir(cgroup))
        if isinstance(exc, OSError):
            fail(oserror(f"run: {cgroup}", exc))
        raise
    if not quiet:
        click.echo(f"Running scope as unit: {result['unit']}", err=True)
    _become(command, "run")


# ---------------------------------------------------------------------- /dev/ioasid
def _parse_range(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        lo_text, hi_text = value.split("-", 1)
        lo, hi = int(lo_text, 0), int(hi_text, 0)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not MIN-MAX") from None
    if not 0 <= lo <= hi:
        raise click.BadParameter(f"{value!r}: need 0 <= MIN <= MAX")
    return lo, hi


def _open(env: Env) -> IoasidClient:
    """Open the daemon's /dev/ioasid for this process, or fail with one line."""
    from ioasidsd.userapi.client import IoasidClient
    from ioasidsd.userapi.protocol import SOCKET_NAME

    runtime = env.runtime_dir
    try:
        return IoasidClient.open(runtime)
    except FileNotFoundError:
        fail(f"no daemon: {os.path.join(runtime, SOCKET_NAME)} does not exist")
    except ConnectionRefusedError:
        fail(f"no daemon listening on {os.path.join(runtime, SOCKET_NAME)}")
    except OSError as exc:
        fail(oserror("cannot open /dev/ioasid", exc))


@main.command()
@click.option("--count", "-n", default=1, show_default=True, type=click.IntRange(1, 65536),
              help="How many IOASIDs.")
@click.option("--range", "id_range", default=f"1-{MAX_ID}", show_default=True,
              metavar="MIN-MAX", callback=_parse_range, help="Inclusive range of the IDs.")
@click.option("--batch", is_flag=True,
              help="One batch request (an extension): all COUNT or none.")
@click.option("--hold", is_flag=True,
              help="Keep the IOASIDs until killed (they are freed when this process ends).")
@click.pass_obj
def alloc(env: Env, count: int, id_range: tuple[int, int], batch: bool, hold: bool) -> None:
    """Allocate IOASIDs for this process through /dev/ioasid; print them one per line.

    They are charged to this process's cgroup and freed when it exits, so without --hold they
    are freed again right after printing. One ALLOC per ID unless --batch; the first refusal
    ends the command with its errno, its cause (for EAGAIN, the level whose limit refused)
    and exit status 1.
    """
    import signal

    lo, hi = id_range
    dev = _open(env)
    with dev:
        try:
            if batch:
                for ioasid in dev.alloc_batch(count, lo, hi):
                    click.echo(ioasid)
            else:
                for _ in range(count):
                    click.echo(dev.alloc(lo, hi))
        except OSError as exc:
            sys.stdout.flush()
            fail(f"alloc: {exc.strerror or exc}")  # the daemon's cause is in it
        if hold:
            sys.stdout.flush()
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            while True:
                signal.pause()


@main.command()
@click.argument("ids", nargs=-1, required=True, type=click.IntRange(0, MAX_ID))
@click.pass_obj
def free(env: Env, ids: tuple[int, ...]) -> None:
    """Free IOASIDs through /dev/ioasid as this process.

    The user API frees only the caller's own IOASIDs: a fresh process owns none, so this shows
    the ownership rule (the fixed profile answers EACCES or ENOENT, v4 answers success and frees
    nothing). Every ID is tried; exit status 1 if one failed.
    """
    failed = False
    with _open(env) as dev:
        for ioasid in ids:
            try:
                dev.free(ioasid)
            except OSError as exc:
                click.echo(f"ioasidctl: free {ioasid}: {exc.strerror or exc}", err=True)
                failed = True
    if failed:
        raise SystemExit(1)


# ---------------------------------------------------------------------- trace
@main.group()
def trace() -> None:
    """Record the daemon's live /dev/ioasid traffic as a trace that experiment policies
    replay (arrival = { process = "trace", file = ... })."""


@trace.command()
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False),
              help="The trace file to write (CSV: time,op,pid,cgroup,count).")
@click.option("--duration", type=click.FloatRange(0, min_open=True), default=None,
              metavar="SECONDS", help="Stop after this long.  [default: until interrupted]")
@click.pass_obj
def record(env: Env, out: str, duration: float | None) -> None:
    """Record the daemon's live traffic into OUT until --duration has passed or the command is
    interrupted (SIGINT or SIGTERM; what was recorded until then is kept). Root only.

    Recorded: every process that asks for IOASIDs (a spawn in its cgroup when it first asks,
    its allocation requests, granted or refused, with their counts, its frees, moves and exit),
    times in seconds from the start. What processes hold when the recording starts is
    recorded at time 0. The file is written as the recording goes, every half second.
    """
    if os.geteuid() != 0:
        fail("trace record: only root may record a trace (it shows every process's requests)")
    import contextlib
    import csv
    import signal
    import time

    from ioasidsd.control.client import ControlError

    def call(action: str, **args: Any) -> Any:
        try:
            return env.client.call("trace", action=action, **args)
        except ControlError as exc:
            name = "" if exc.error in ("ENOTCONN", "EPROTO") else f" ({exc.error})"
            fail(f"trace record: {exc}{name}")

    signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # taken by sigtimedwait below
    token = call("start")["token"]
    started = time.monotonic()
    try:
        f = open(out, "w", newline="", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as exc:
        with contextlib.suppress(ControlError):
            env.client.call("trace", action="stop", token=token)
        fail(oserror(f"trace record: {out}", exc))
    written = 0
    with f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(("time", "op", "pid", "cgroup", "count"))
        f.flush()
        click.echo(f"recording to {out}")
        sys.stdout.flush()
        ended = None
        while ended is None:
            wait = 0.5
            if duration is not None:
                wait = min(wait, started + duration - time.monotonic())
            if wait > 0 and signal.sigtimedwait(signals, wait) is not None:
                break
            if duration is not None and time.monotonic() >= started + duration:
                break
            reply = call("read", token=token)
            writer.writerows(reply["rows"])
            written += len(reply["rows"])
            f.flush()
            ended = reply["ended"]
        if ended is None:
            reply = call("stop", token=token)
            writer.writerows(reply["rows"])
            written += len(reply["rows"])
            ended = reply["ended"]
    if ended is not None:
        fail(f"trace record: the daemon ended the recording: {ended} ({written} rows kept "
             f"in {out})")
    click.echo(f"recorded {written} rows in {time.monotonic() - started:.1f} s to {out}")


main.lazy_commands.update({"wrap": "ioasidsd.cli.wrap:wrap",
                           "experiment": "ioasidsd.cli.experiments:experiment"})
