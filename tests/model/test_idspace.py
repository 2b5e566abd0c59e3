"""The default allocator (``idspace.py``): a map of 32-bit values to objects, the lowest free
value in an inclusive range, the all-ones value never handed out, chunks of 65,536 values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.model.idspace import CHUNK_SIZE, IdSpace

INVALID = 0xFFFFFFFF
TOP = 0xFFFFFFFE


def test_lowest_free_in_range() -> None:
    space = IdSpace()
    assert [space.alloc(0, 10, "v") for _ in range(3)] == [0, 1, 2]
    space.remove(1)
    assert space.alloc(0, 10, "v") == 1
    assert space.alloc(5, 10, "v") == 5
    assert space.alloc(0, 10, "v") == 3
    assert space.alloc(7, 7, "v") == 7
    assert space.alloc(7, 7, "v") == -1  # the one value is taken
    assert len(space) == 6 and 7 in space and 6 not in space


def test_bad_ranges() -> None:
    space = IdSpace()
    assert space.alloc(10, 9, "v") == -1
    assert space.alloc(-1, 5, "v") == -1
    assert len(space) == 0


def test_range_full() -> None:
    space = IdSpace()
    assert [space.alloc(100, 103, "v") for _ in range(5)] == [100, 101, 102, 103, -1]
    space.remove(102)
    assert space.alloc(100, 103, "v") == 102


def test_chunk_boundaries() -> None:
    space = IdSpace()
    edge = CHUNK_SIZE - 1
    assert CHUNK_SIZE == 65536
    assert space.alloc(edge, edge + 1, "v") == edge
    assert space.alloc(edge, edge + 1, "v") == CHUNK_SIZE  # the first value of the next chunk
    assert space.alloc(edge, edge + 1, "v") == -1
    assert space.insert(2 * CHUNK_SIZE, "v")
    assert space.alloc(2 * CHUNK_SIZE - 1, 3 * CHUNK_SIZE, "v") == 2 * CHUNK_SIZE - 1
    assert space.alloc(2 * CHUNK_SIZE - 1, 3 * CHUNK_SIZE, "v") == 2 * CHUNK_SIZE + 1
    space.remove(CHUNK_SIZE)
    assert space.alloc(0, 3 * CHUNK_SIZE, "v") == 0
    assert space.alloc(1, 3 * CHUNK_SIZE, "v") == 1


def test_full_chunks_are_skipped_and_reopened() -> None:
    space = IdSpace()
    for value in range(CHUNK_SIZE):
        assert space.alloc(0, INVALID, "v") == value
    assert space.alloc(0, CHUNK_SIZE - 1, "v") == -1  # hi inside the full chunk
    assert space.alloc(0, INVALID, "v") == CHUNK_SIZE  # skips the full chunk
    space.remove(12345)
    assert space.alloc(0, INVALID, "v") == 12345  # the chunk is open again
    assert space.alloc(0, CHUNK_SIZE - 1, "v") == -1
    assert len(space) == CHUNK_SIZE + 1


def test_far_range_and_hi_limit() -> None:
    space = IdSpace()
    lo = 40 * CHUNK_SIZE + 7
    assert space.alloc(lo, lo + 1, "v") == lo
    assert space.alloc(lo, lo + 1, "v") == lo + 1
    assert space.alloc(lo, lo + 1, "v") == -1
    assert space.alloc(0, 5, "v") == 0  # low values untouched


def test_the_invalid_value_is_never_handed_out() -> None:
    space = IdSpace()
    assert space.alloc(INVALID, INVALID, "v") == -1
    assert space.alloc(TOP, INVALID, "v") == TOP
    assert space.alloc(TOP, INVALID, "v") == -1
    assert space.alloc(TOP - 1, 1 << 40, "v") == TOP - 1  # a hi beyond 32 bits is clamped
    assert space.alloc(TOP - 1, 1 << 40, "v") == -1


def test_insert_and_remove() -> None:
    space = IdSpace()
    assert space.insert(5, "five") is True
    assert space.insert(5, "other") is False
    assert space.get(5) == "five"
    assert 5 in space and len(space) == 1
    assert space.alloc(5, 6, "v") == 6
    assert space.remove(5) == "five"
    assert space.remove(5) is None  # removing a free value: no-op
    assert space.remove(7 * CHUNK_SIZE) is None  # in an untouched chunk: no-op
    assert 5 not in space and len(space) == 1
    assert space.alloc(0, 10, "v") == 0


def test_emptied_chunks_are_kept_and_hold_nothing() -> None:
    """A chunk whose last value is removed is kept (alloc/free pairs would otherwise rebuild
    64 KiB each time) but holds no reference to the removed objects."""
    space = IdSpace()
    values = [space.alloc(3 * CHUNK_SIZE, INVALID, object()) for _ in range(3)]
    assert len(space._chunks) == 1
    for value in values:
        space.remove(value)
    assert len(space) == 0 and list(space) == []
    assert all(item is None for item in space._chunks[3].items)
    assert space.alloc(3 * CHUNK_SIZE, INVALID, "again") == 3 * CHUNK_SIZE


def test_iteration_and_values_ascend() -> None:
    space = IdSpace()
    for value in (CHUNK_SIZE + 3, 7, 2 * CHUNK_SIZE, 0):
        assert space.insert(value, f"at {value}")
    assert list(space) == [0, 7, CHUNK_SIZE + 3, 2 * CHUNK_SIZE]
    assert list(space.values()) == [f"at {v}" for v in list(space)]


# A reference: values drawn near chunk boundaries, checked against a plain set.
ANCHORS = [0, CHUNK_SIZE - 40, CHUNK_SIZE, 2 * CHUNK_SIZE - 40, TOP - 60]
_value = st.builds(lambda a, d: min(a + d, INVALID), st.sampled_from(ANCHORS),
                   st.integers(0, 80))
_op = st.one_of(
    st.tuples(st.just("alloc"), _value, st.integers(0, 120)),
    st.tuples(st.just("release"), _value, st.just(0)),
    st.tuples(st.just("take"), _value, st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_op, max_size=120))
def test_matches_a_reference_set(ops: list[tuple[str, int, int]]) -> None:
    space = IdSpace()
    used: set[int] = set()
    for op, value, width in ops:
        if op == "alloc":
            lo, hi = value, value + width
            expected = next((v for v in range(lo, min(hi, TOP) + 1) if v not in used), -1)
            assert space.alloc(lo, hi, "v") == expected
            if expected >= 0:
                used.add(expected)
        elif op == "release":
            space.remove(value)
            used.discard(value)
        else:
            assert space.insert(value, "v") is (value not in used and value <= TOP)
            if value <= TOP:
                used.add(value)
        assert len(space) == len(used)
    assert all(v in space for v in used)


@settings(deadline=None)  # chunks of 65,536 values are made: slow on a busy machine
@given(used=st.sets(st.integers(0, 3 * CHUNK_SIZE), max_size=40),
       probes=st.lists(st.integers(-5, 3 * CHUNK_SIZE + 5), max_size=40))
def test_any_used_answers_as_in_for_each(used, probes) -> None:
    space = IdSpace()
    for value in used:
        assert space.insert(value, value)
    assert space.any_used(probes) == any(p in space for p in probes)
    assert space.any_used(sorted(used)) == bool(used)
    for probe in probes:  # ranges (a batch's slice), looked at a chunk at a time
        for span in (range(probe - 3, probe + 4), range(probe, probe + CHUNK_SIZE + 2),
                     range(probe, probe)):
            assert space.any_used(span) == any(u in span for u in used)


def test_get_range_is_get_of_each_value_across_chunks() -> None:
    space = IdSpace()
    for value in (3, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 5, 3 * CHUNK_SIZE + 1):
        assert space.insert(value, f"v{value}")
    space.remove(CHUNK_SIZE + 5)
    for first, last in ((0, 10), (CHUNK_SIZE - 2, CHUNK_SIZE + 6), (5, 4 * CHUNK_SIZE),
                        (2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 3), (3, 3)):
        assert space.get_range(first, last) == [space.get(v) for v in range(first, last + 1)]
    assert space.get_range(7, 6) == []
