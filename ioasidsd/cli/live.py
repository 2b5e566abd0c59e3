"""``ioasidctl top`` on a terminal: a screen refreshed every few seconds, with sort keys.

``run_top`` draws ``render.format_top``'s table with curses: the header in reverse video, the
rows clipped to the screen. Keys: ``p`` path, ``c`` current (IOASIDs), ``m`` max, ``k`` peak,
``e`` events, ``t`` procs, ``q`` quit (Ctrl-C too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from ioasidsd.cli.render import format_top

KEYS = {"p": "path", "c": "current", "m": "max", "k": "peak", "e": "events", "t": "procs"}
"""The key that sorts by each column."""


def run_top(fetch: Callable[[], dict[str, Any]], *, order: str, delay: float,
            iterations: int | None) -> None:
    """Show ``fetch()`` (a ``top`` reply; what it raises ends the view and is raised again
    after the terminal is restored) every ``delay`` seconds until ``q``, Ctrl-C or
    ``iterations`` refreshes."""
    import curses

    def loop(screen: Any) -> None:
        nonlocal order
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        screen.timeout(int(delay * 1000))
        done = 0
        while True:
            lines = format_top(fetch(), order=order, header=True).splitlines()
            height, width = screen.getmaxyx()
            screen.erase()
            for y, line in enumerate(lines[: max(height - 1, 1)]):
                attr = curses.A_REVERSE if y == 0 else curses.A_NORMAL
                screen.addnstr(y, 0, line, max(width - 1, 1), attr)
            screen.refresh()
            done += 1
            if iterations is not None and done >= iterations:
                return
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            if 0 <= key < 256 and chr(key) in KEYS:
                order = KEYS[chr(key)]

    try:
        curses.wrapper(loop)
    except KeyboardInterrupt:
        return
