"""``ioasidsd``: the daemon's command line."""

from __future__ import annotations

import sys

import click

from ioasidsd.daemon.config import HIERARCHIES, LOG_FORMATS, LOG_LEVELS, TRACKING_MODES
from ioasidsd.model import IoasidCore, IoasidError, IoasidSetType, profile
from ioasidsd.model.ioasids import IoasidsController
from ioasidsd.model.knobs import PROFILES


@click.group()
@click.version_option(package_name="ioasids")
def main() -> None:
    """ioasidsd: the IOASID core, the ioasids cgroup controller and /dev/ioasid in user space."""


@main.command()
@click.option("--mount", type=click.Path(), default=None,
              help="Mount point of the hierarchy.  [default: /sys/fs/cgroup/ioasids]")
@click.option("--state-dir", type=click.Path(), default=None,
              help="Directory of the durable state.  [default: /var/lib/ioasidsd]")
@click.option("--runtime-dir", type=click.Path(), default=None,
              help="Directory of the pid file and control socket.  [default: /run/ioasidsd]")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file with the same settings, the knobs and VT-d units; flags win.")
@click.option("--capacity", type=int, default=None,
              help="IOASID capacity installed in a new state, at most the VT-d units' PASID "
                   "space.  [default: that space, 1048576 with PSS=19]")
@click.option("--profile", "profile_name", type=click.Choice(PROFILES), default=None,
              help="Semantics profile.  [default: fixed]")
@click.option("--hierarchy", type=click.Choice(HIERARCHIES), default=None,
              help="The hierarchy served: cgroup v1, or v2 (unified, with "
                   "cgroup.subtree_control).  [default: v1]")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
              help="Log lines: console, logfmt, json; auto is console on a terminal, JSON "
                   "otherwise.  [default: auto]")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
              help="Least severe level logged.  [default: info]")
@click.option("--tracking", type=click.Choice(TRACKING_MODES), default=None,
              help="Who keeps process membership: the kernel (a named cgroup-v1 hierarchy), "
                   "the netlink connector, psutil polling, or auto (the first that works).  "
                   "[default: auto]")
@click.option("--reset-state", is_flag=True,
              help="Move the saved state aside (into STATE_DIR/saved-TIME, never deleted) and "
                   "start afresh: for a state made with other settings.")
def run(mount: str | None, state_dir: str | None, runtime_dir: str | None,
        config_file: str | None, capacity: int | None, profile_name: str | None,
        hierarchy: str | None, log_format: str | None, log_level: str | None,
        tracking: str | None, reset_state: bool) -> None:
    """Serve the hierarchy in the foreground until SIGTERM or SIGINT (SIGHUP reloads).

    Exit status: 0 after a clean stop, 1 when the daemon cannot start or stops on an error,
    2 for a bad command line or configuration file.
    """
    from ioasidsd.daemon.app import run as run_daemon
    from ioasidsd.daemon.config import ConfigError, load_config

    flags = {"mount": mount, "state_dir": state_dir, "runtime_dir": runtime_dir,
             "capacity": capacity, "profile": profile_name, "hierarchy": hierarchy,
             "log_format": log_format,
             "log_level": log_level, "tracking": tracking}
    try:
        config = load_config(config_file, flags)
    except ConfigError as exc:
        click.echo(f"ioasidsd: {exc}", err=True)
        sys.exit(2)
    sys.exit(run_daemon(config, flags, reset_state=reset_state))


@main.command()
@click.option("--profile", "profile_name", type=click.Choice(PROFILES), default="fixed",
              show_default=True, help="Semantics profile.")
def demo(profile_name: str) -> None:
    """Run the series' cgroup example on the in-process model and print what it shows."""
    core = IoasidCore(profile(profile_name))
    controller = IoasidsController(core)
    cgroups = controller.hierarchy
    test1 = cgroups.mkdir(cgroups.root, "test1")
    controller.set_max(test1, 5)
    shell = cgroups.track(1000, 1.0, test1)
    ioasid_set = core.set_alloc(shell.mm, 0, IoasidSetType.MM)
    click.echo(f"profile {profile_name}: test1 ioasids.max=5, capacity available "
               f"{core.capacity_avail}")
    for _ in range(6):
        try:
            ioasid = core.alloc(ioasid_set, 1, (1 << 31) - 1, task=shell)
            click.echo(f"  alloc -> {ioasid}   ioasids.current={test1.counter}")
        except IoasidError as exc:
            click.echo(f"  alloc refused: {exc}   ioasids.events: max {test1.events}")
    holder = cgroups.track(1234, 2.0)
    try:
        holder_set = core.set_alloc(holder.mm, 0, IoasidSetType.MM)
        core.alloc(holder_set, 1, (1 << 31) - 1, task=holder)
    except IoasidError as exc:
        click.echo(f"  pid 1234 could not open /dev/ioasid or allocate: {exc}")
        click.echo("  (v4: the first opener's quota-0 set took the whole pool)")
        return
    cgroups.attach(holder, test1)
    click.echo(f"  moved pid 1234 (holding {holder_set.nr_ioasids}) into test1: "
               f"ioasids.current={test1.counter} ioasids.max={test1.limit}")
