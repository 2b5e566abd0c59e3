"""The error of a policy (or trace) that cannot run: which key (or line) and why."""

from __future__ import annotations


class PolicyError(ValueError):
    """A policy that is rejected before anything runs.

    ``key`` names the value by its path in the policy (``workload[gold].arrival.rate``), or a
    trace's line (``line 7``); ``reason`` says what is wrong; ``file`` is the policy's (or
    trace's) path once known. ``str()`` is the one line the CLI prints:
    ``FILE: KEY: REASON``.
    """

    def __init__(self, key: str, reason: str, file: str | None = None) -> None:
        super().__init__(key, reason, file)
        self.key = key
        self.reason = reason
        self.file = file

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.key}: {self.reason}"
