"""``ioasidctl``: the administrator's command line."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="ioasids")
def main() -> None:
    """ioasidctl: inspect and drive a running ioasidsd."""
