"""``ioasidsd.store.fold``: the runs a fold removes rows by."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from ioasidsd.store.fold import id_runs


@given(st.sets(st.integers(-3, 300) | st.integers(65_530, 65_545)))
def test_id_runs_cover_exactly_the_ids_in_ascending_disjoint_runs(ids):
    runs = id_runs(ids)
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(ids)
    for (_, last), (first, _) in pairwise(runs):
        assert first > last + 1  # maximal: two runs never touch
