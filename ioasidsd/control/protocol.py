"""The control API's wire format, shared by its server and its client.

One request per line, one reply per line, both JSON objects::

    -> {"verb": "status"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": "EINVAL", "message": "unknown verb 'stauts'"}

``error`` is an errno name (``EINVAL``, ``EACCES``, ``EAGAIN``...). A request line longer than
``MAX_REQUEST`` bytes is answered ``E2BIG`` and ends the connection.
"""

from __future__ import annotations

SOCKET_NAME = "control.sock"
"""The control socket's name in the daemon's runtime directory."""

MAX_REQUEST = 1 << 16
"""The longest request line, in bytes."""
