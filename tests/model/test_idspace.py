"""The default allocator (``idspace.py``): lowest free value in an inclusive range, 32-bit
values, the all-ones value never handed out, chunks of 65,536 values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.model.idspace import CHUNK_SIZE, IdSpace

INVALID = 0xFFFFFFFF
TOP = 0xFFFFFFFE


def test_lowest_free_in_range() -> None:
    space = IdSpace()
    assert [space.alloc(0, 10) for _ in range(3)] == [0, 1, 2]
    space.release(1)
    assert space.alloc(0, 10) == 1
    assert space.alloc(5, 10) == 5
    assert space.alloc(0, 10) == 3
    assert space.alloc(7, 7) == 7
    assert space.alloc(7, 7) == -1  # the one value is taken
    assert len(space) == 6 and 7 in space and 6 not in space


def test_bad_ranges() -> None:
    space = IdSpace()
    assert space.alloc(10, 9) == -1
    assert space.alloc(-1, 5) == -1
    assert len(space) == 0


def test_range_full() -> None:
    space = IdSpace()
    assert [space.alloc(100, 103) for _ in range(5)] == [100, 101, 102, 103, -1]
    space.release(102)
    assert space.alloc(100, 103) == 102


def test_chunk_boundaries() -> None:
    space = IdSpace()
    edge = CHUNK_SIZE - 1
    assert CHUNK_SIZE == 65536
    assert space.alloc(edge, edge + 1) == edge
    assert space.alloc(edge, edge + 1) == CHUNK_SIZE  # the first value of the next chunk
    assert space.alloc(edge, edge + 1) == -1
    assert space.take(2 * CHUNK_SIZE)
    assert space.alloc(2 * CHUNK_SIZE - 1, 3 * CHUNK_SIZE) == 2 * CHUNK_SIZE - 1
    assert space.alloc(2 * CHUNK_SIZE - 1, 3 * CHUNK_SIZE) == 2 * CHUNK_SIZE + 1
    space.release(CHUNK_SIZE)
    assert space.alloc(0, 3 * CHUNK_SIZE) == 0
    assert space.alloc(1, 3 * CHUNK_SIZE) == 1


def test_full_chunks_are_skipped_and_reopened() -> None:
    space = IdSpace()
    for value in range(CHUNK_SIZE):
        assert space.alloc(0, INVALID) == value
    assert space.alloc(0, CHUNK_SIZE - 1) == -1  # hi inside the full chunk
    assert space.alloc(0, INVALID) == CHUNK_SIZE  # skips the full chunk
    space.release(12345)
    assert space.alloc(0, INVALID) == 12345  # the chunk is open again
    assert space.alloc(0, CHUNK_SIZE - 1) == -1
    assert len(space) == CHUNK_SIZE + 1


def test_far_range_and_hi_limit() -> None:
    space = IdSpace()
    lo = 40 * CHUNK_SIZE + 7
    assert space.alloc(lo, lo + 1) == lo
    assert space.alloc(lo, lo + 1) == lo + 1
    assert space.alloc(lo, lo + 1) == -1
    assert space.alloc(0, 5) == 0  # low values untouched


def test_the_invalid_value_is_never_handed_out() -> None:
    space = IdSpace()
    assert space.alloc(INVALID, INVALID) == -1
    assert space.alloc(TOP, INVALID) == TOP
    assert space.alloc(TOP, INVALID) == -1
    assert space.alloc(TOP - 1, 1 << 40) == TOP - 1  # a hi beyond 32 bits is clamped
    assert space.alloc(TOP - 1, 1 << 40) == -1


def test_take_and_release() -> None:
    space = IdSpace()
    assert space.take(5) is True
    assert space.take(5) is False
    assert 5 in space and len(space) == 1
    assert space.alloc(5, 6) == 6
    space.release(5)
    space.release(5)  # releasing a free value: no-op
    space.release(7 * CHUNK_SIZE)  # in an untouched chunk: no-op
    assert 5 not in space and len(space) == 1
    assert space.alloc(0, 10) == 0


def test_empty_chunks_are_dropped() -> None:
    """Memory follows use: a chunk whose last value is released is freed."""
    space = IdSpace()
    values = [space.alloc(3 * CHUNK_SIZE, INVALID) for _ in range(3)]
    assert len(space._chunks) == 1
    for value in values:
        space.release(value)
    assert space._chunks == {} and len(space) == 0


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
            assert space.alloc(lo, hi) == expected
            if expected >= 0:
                used.add(expected)
        elif op == "release":
            space.release(value)
            used.discard(value)
        else:
            assert space.take(value) is (value not in used)
            used.add(value)
        assert len(space) == len(used)
    assert all(v in space for v in used)
