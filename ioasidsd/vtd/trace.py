"""The VT-d trace: an ordered record of what the hardware and the driver did.

Each ``TraceEvent`` has a sequence number, a kind and a dict of fields. Kinds:

* hardware: ``reg_write``, ``iq_enable``, ``inv_desc`` (one per descriptor processed), ``iqe``,
  ``fault``, ``hazard`` (a simulator check, see ``translation``), ``page_alloc``, ``page_free``,
  ``prq_request`` (a page request queued, dropped or auto-answered), ``prq_response`` (a page
  group response delivered to a device), ``vcmd``;
* driver: ``qi_submit`` (one per batch, with its descriptor labels), ``pasid_entry_set``,
  ``pasid_entry_clear``, ``prq_report`` (a request handled by the driver), ``drain_begin``,
  ``drain_end``, ``boot``, ``bind``, ``unbind``, ``ioasid_state`` (FREE seen, cleanup begins,
  reference dropped), ``warn`` (what the kernel would log).

The trace keeps the last ``maxlen`` events; ``seq`` keeps counting. Listeners are called after
each event is recorded: tests use them to act at an exact point (for example to inject a page
request right after an entry is cleared and before the drain), which is the step mode for
events inside one driver call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TraceEvent:
    seq: int
    kind: str
    fields: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        """The event as one flat mapping (fields never use the names ``seq`` or ``kind``)."""
        return {**self.fields, "seq": self.seq, "kind": self.kind}


Listener = Callable[[TraceEvent], None]


class Trace:
    """A bounded, ordered event log with listeners."""

    def __init__(self, maxlen: int = 4096) -> None:
        self.events: deque[TraceEvent] = deque(maxlen=maxlen)
        self.seq = 0
        self._listeners: list[Listener] = []

    def emit(self, kind: str, /, **fields: Any) -> TraceEvent:
        """Record an event and call the listeners."""
        self.seq += 1
        event = TraceEvent(self.seq, kind, fields)
        self.events.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every later event; returns a function that unsubscribes."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def since(self, seq: int, kinds: Iterable[str] | None = None) -> list[TraceEvent]:
        """The retained events after ``seq``, optionally only of ``kinds``."""
        wanted = set(kinds) if kinds is not None else None
        return [e for e in self.events
                if e.seq > seq and (wanted is None or e.kind in wanted)]

    def last(self, n: int, kinds: Iterable[str] | None = None) -> list[TraceEvent]:
        """The last ``n`` retained events, optionally only of ``kinds``."""
        wanted = set(kinds) if kinds is not None else None
        picked = [e for e in self.events if wanted is None or e.kind in wanted]
        return picked[-n:] if n > 0 else []
