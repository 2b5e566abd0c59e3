"""``ioasidsd``: the daemon's command line."""

from __future__ import annotations

import click

from ioasidsd.model import IoasidCore, IoasidError, IoasidSetType, profile
from ioasidsd.model.cgroup import IoasidsController
from ioasidsd.model.knobs import PROFILES


@click.group()
@click.version_option(package_name="ioasids")
def main() -> None:
    """ioasidsd: the IOASID core, the ioasids cgroup controller and /dev/ioasid in user space."""


@main.command()
@click.option("--profile", "profile_name", type=click.Choice(PROFILES), default="fixed",
              show_default=True, help="Semantics profile.")
def demo(profile_name: str) -> None:
    """Run the series' cgroup example on the in-process model and print what it shows."""
    core = IoasidCore(profile(profile_name))
    cgroups = IoasidsController(core)
    test1 = cgroups.mkdir(cgroups.root, "test1")
    cgroups.set_max(test1, 5)
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
        click.echo("  (v4: the first opener's quota-0 set took the whole pool, spec 4.6)")
        return
    cgroups.attach(holder, test1)
    click.echo(f"  moved pid 1234 (holding {holder_set.nr_ioasids}) into test1: "
               f"ioasids.current={test1.counter} ioasids.max={test1.limit}")
