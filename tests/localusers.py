"""Real local users for tests that act as someone other than root."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LocalUser:
    """A real local user: its name, uid and primary gid."""

    name: str
    uid: int
    gid: int

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` as this user (no supplementary groups, ``HOME=/``)."""
        env = kwargs.pop("env", None) or {"PATH": "/usr/bin:/bin", "HOME": "/",
                                          "LC_ALL": "C.UTF-8"}
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[],
                                env=env, **kwargs)

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user to completion; output captured as text."""
        env = kwargs.pop("env", None) or {"PATH": "/usr/bin:/bin", "HOME": "/",
                                          "LC_ALL": "C.UTF-8"}
        kwargs.setdefault("timeout", 60)
        return subprocess.run(argv, user=self.uid, group=self.gid, extra_groups=[], env=env,
                              capture_output=True, text=True, check=False, **kwargs)
