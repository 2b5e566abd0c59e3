"""The lookup of an MM set by its token (``find_mm_set``) is an index kept with the sets: it
answers as a scan of every registered set in registration order would, after creation,
destruction and restoring from a snapshot, for any token."""

from __future__ import annotations

from typing import Any

from ioasidsd.model import IoasidCore, IoasidSetType
from ioasidsd.model.core import IoasidSet


def test_index_answers_as_a_scan() -> None:
    core = IoasidCore()
    tokens: list[Any] = ["a", ("b", 1), 3, ["unhashable"], {"also": "unhashable"}]
    made = [core.set_alloc(t, 0, IoasidSetType.MM) for t in tokens]
    null = core.set_alloc(None, 0, IoasidSetType.NULL)
    for t, s in zip(tokens, made, strict=True):
        assert core.find_mm_set(t) is s is _scan_registered(core, t)
    assert core.find_mm_set(None) is None and core.find_mm_set("z") is None
    assert core.find_mm_set(["unhashable"]) is made[3]
    for s in (made[0], made[3], null):
        assert core.set_free(s)
    for t in tokens:
        assert core.find_mm_set(t) is _scan_registered(core, t)
    assert core.find_mm_set("a") is None and core.find_mm_set(["unhashable"]) is None
    again = core.set_alloc("a", 0, IoasidSetType.MM)
    assert core.find_mm_set("a") is again


def test_restored_duplicates_answer_in_registration_order() -> None:
    core = IoasidCore()
    first = IoasidSet(7, "same", 0, IoasidSetType.MM)
    second = IoasidSet(3, "same", 0, IoasidSetType.MM)
    with core.lock:
        core.restore_set(first)
        core.restore_set(second)
    assert core.find_mm_set("same") is first is _scan_registered(core, "same")
    assert core.set_free(first)
    assert core.find_mm_set("same") is second


def _scan_registered(core: IoasidCore, token: Any) -> IoasidSet | None:
    for s in core.sets_by_id.values():  # registration order, as the lookup promises
        if s.type == IoasidSetType.MM and s.token == token:
            return s
    return None
