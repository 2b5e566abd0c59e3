"""The daemon's log: structlog, key-value lines on a terminal, JSON otherwise.

``setup_logging`` may be called again (a reload changes format or level); loggers obtained with
``get_logger`` follow. Lines a client's request causes are rate-limited per uid
(``ioasidsd.clients.ClientLogLimit``: 10 lines per 5 s, then one line saying how many were
dropped), so that no local user can flood the log. ``forward_model_messages`` sends the
model's would-be kernel log lines (``IoasidCore.messages``) to the log as they are recorded,
with ``source="model"``.
"""

from __future__ import annotations

import collections
import logging
import sys
from typing import Any, TextIO

import structlog

from ioasidsd.clients import CLIENT_LOG_LIMIT
from ioasidsd.model.core import IoasidCore

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _renderer(fmt: str, stream: TextIO) -> Any:
    tty = hasattr(stream, "isatty") and stream.isatty()
    if fmt == "auto":
        fmt = "console" if tty else "json"
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=tty)
    if fmt == "logfmt":
        return structlog.processors.LogfmtRenderer(key_order=["timestamp", "level", "event"])
    if fmt == "json":
        return structlog.processors.JSONRenderer(sort_keys=True)
    raise ValueError(f"unknown log format {fmt!r}")


def setup_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for the process: ``fmt`` is ``auto`` (console on a terminal, JSON
    otherwise), ``console``, ``logfmt`` or ``json``; ``level`` one of debug, info, warning,
    error. ``ValueError`` for anything else."""
    if level not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    stream = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            CLIENT_LOG_LIMIT,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _renderer(fmt, stream),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(**context: Any) -> Any:
    """A logger bound to ``context`` that follows later ``setup_logging`` calls."""
    return structlog.get_logger("ioasidsd", **context)  # a lazy proxy: bind() would freeze it


class _ForwardingDeque(collections.deque):
    """The model's message ring, logging each message as it is recorded."""

    def __init__(self, log: Any, items: Any, maxlen: int | None) -> None:
        super().__init__(items, maxlen)
        self._log = log

    def append(self, message: Any) -> None:
        super().append(message)
        self._log.warning(str(message), source="model")


def forward_model_messages(core: IoasidCore, log: Any) -> None:
    """From now on, every message the model records is also logged (at warning level)."""
    core.messages = _ForwardingDeque(log, core.messages, core.messages.maxlen)
