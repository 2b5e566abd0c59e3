"""sd_notify: tell the service manager about start-up, status and shutdown.

The protocol (``sd_notify(3)``): when ``$NOTIFY_SOCKET`` is set, send one datagram of
newline-separated ``KEY=VALUE`` lines to that AF_UNIX socket, a path or, with a leading ``@``,
an abstract name. Without the variable there is nothing to do.
"""

from __future__ import annotations

import os
import socket


def sd_notify(*lines: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``lines`` (e.g. ``"READY=1"``, ``"STATUS=serving"``) as one notification.

    Returns ``False`` when there is no ``$NOTIFY_SOCKET``; raises ``OSError`` if it is set but
    cannot be reached, and ``ValueError`` for a kind of address this code does not speak
    (``vsock:``) or a line holding a newline.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if any("\n" in line for line in lines):
        raise ValueError("a notification line may not contain a newline")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        raise ValueError(f"unsupported NOTIFY_SOCKET address {address!r}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall("\n".join(lines).encode())
    return True
