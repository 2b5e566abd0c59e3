"""``ioasidsd.store.fold``: the runs a fold removes and makes rows by."""

from __future__ import annotations

from array import array
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.store.fold import IOASID, IOASIDS, FoldPlan, id_runs, ids_bytes
from ioasidsd.store.state import Store


@given(st.sets(st.integers(-3, 300) | st.integers(65_530, 65_545)))
def test_id_runs_cover_exactly_the_ids_in_ascending_disjoint_runs(ids):
    runs = id_runs(ids)
    covered = [i for first, last in runs for i in range(first, last + 1)]
    assert covered == sorted(ids)
    for (_, last), (first, _) in pairwise(runs):
        assert first > last + 1  # maximal: two runs never touch


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40),
                          st.sampled_from([None, (7, 1, 1, 5, None, 1, True, None),
                                           (7, 1, 2, 5, 3, 0, False, '{"a": 1}')])),
                max_size=12))
def test_a_fold_writes_runs_of_rows_as_the_rows_one_by_one(tmp_path_factory, slices):
    """Slices of consecutive IDs made or removed alike (``IOASIDS``) and single rows
    (``IOASID``) fold to the rows their last states say, whether a run is written in one
    statement or row by row."""
    store = Store.open(tmp_path_factory.mktemp("state"))
    try:
        expected: dict[int, tuple] = {}
        plan = FoldPlan()
        for first, length, fields in slices:
            ids = array("I", range(first, first + length))
            if length == 1:
                plan.add([(IOASID, first, fields, 7) if fields is None else
                          (IOASID, first, fields)])
            else:
                plan.add([(IOASIDS, 7, fields, ids_bytes(ids))])
            for i in ids:
                if fields is None:
                    expected.pop(i, None)
                else:
                    expected[i] = (i, *fields)
        db = store.db
        db.execute("BEGIN")
        plan.write(db)
        db.execute("COMMIT")
        rows = {row[0]: row for row in db.execute("SELECT * FROM ioasids")}
        assert rows == {i: tuple(None if v is None else int(v) if isinstance(v, bool) else v
                                 for v in row) for i, row in expected.items()}
    finally:
        store.close()


def fold_into(store: Store, plan: FoldPlan) -> dict[int, tuple]:
    db = store.db
    db.execute("BEGIN")
    plan.write(db)
    db.execute("COMMIT")
    return {row[0]: row for row in db.execute("SELECT * FROM ioasids")}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(8, 40),
                          st.sampled_from([None, (7, 1, 1, 5, None, 1, True, None),
                                           (7, 2, 1, 5, 3, 0, False, None)])),
                max_size=12),
       st.sets(st.integers(0, 160), max_size=40))
def test_runs_given_again_fold_to_their_last_state_over_rows_already_there(
        tmp_path_factory, slices, before):
    """Runs of IDs (a batch's slices) given again, with rows of an earlier fold in place:
    each ID ends as the last run naming it says, or as it was when none did."""
    store = Store.open(tmp_path_factory.mktemp("state"))
    try:
        old = (9, 0, 1, 5, None, 0, True, None)
        first_plan = FoldPlan()
        first_plan.add([(IOASID, i, old) for i in sorted(before)])
        expected = {i: (i, *old) for i in before}
        fold_into(store, first_plan)
        plan = FoldPlan()
        for first, length, fields in slices:
            plan.add([(IOASIDS, 7, fields, ids_bytes(array("I", range(first, first + length))))])
            for i in range(first, first + length):
                if fields is None:
                    expected.pop(i, None)
                else:
                    expected[i] = (i, *fields)
        rows = fold_into(store, plan)
        assert rows == {i: tuple(None if v is None else int(v) if isinstance(v, bool) else v
                                 for v in row) for i, row in expected.items()}
    finally:
        store.close()


def test_a_batch_made_and_freed_within_one_fold_costs_a_step_per_slice(tmp_path):
    """A batch allocated and freed before the fold, in slices of consecutive IDs: each slice
    freed takes the place of its allocation (one step a slice, never a step per ID), and its
    rows end gone, those of an earlier fold included."""
    store = Store.open(tmp_path)
    try:
        live = (7, 1, 1, 5, None, 1, True, None)
        earlier = FoldPlan()
        earlier.add([(IOASIDS, 7, live, ids_bytes(array("I", range(0, 1024))))])
        fold_into(store, earlier)
        plan = FoldPlan()
        slices = [array("I", range(first, first + 1024)) for first in range(0, 65536, 1024)]
        for ids in slices:
            plan.add([(IOASIDS, 7, live, ids_bytes(ids))])
        for ids in slices:
            plan.add([(IOASIDS, 7, None, ids_bytes(ids))])
        assert len(plan.steps) == len(slices)
        assert fold_into(store, plan) == {}
    finally:
        store.close()


def test_runs_given_again_far_back_still_fold_to_their_last_state(tmp_path):
    """300 slices allocated, all freed, then the first 100 allocated again with other fields:
    runs given again more than ``_MERGE_REACH`` steps back are steps of their own (a fold of
    many slices costs linear time), and every ID still ends as its last run says."""
    store = Store.open(tmp_path)
    try:
        live = (7, 1, 1, 5, None, 1, True, None)
        again = (7, 2, 1, 5, 3, 0, False, None)
        slices = [array("I", range(first, first + 16)) for first in range(0, 4800, 16)]
        plan = FoldPlan()
        for fields, chosen in ((live, slices), (None, slices), (again, slices[:100])):
            for ids in chosen:
                plan.add([(IOASIDS, 7, fields, ids_bytes(ids))])
        assert len(plan.steps) > len(slices)  # not all merged: only the reach is looked at
        expected = {i: (i, *again) for ids in slices[:100] for i in ids}
        assert fold_into(store, plan) == {i: tuple(int(v) if isinstance(v, bool) else v
                                                   for v in row)
                                          for i, row in expected.items()}
    finally:
        store.close()


def test_runs_removed_one_after_another_are_removed_by_one_statement(tmp_path):
    """The slices of a batch freed (consecutive removals, given in any order, touching or
    overlapping) are one ``DELETE`` of the range they cover, and remove every row of it and
    no other."""
    store = Store.open(tmp_path)
    try:
        live = (7, 1, 1, 5, None, 1, True, None)
        earlier = FoldPlan()
        earlier.add([(IOASIDS, 7, live, ids_bytes(array("I", range(0, 5000))))])
        fold_into(store, earlier)
        plan = FoldPlan()
        firsts = [*range(1024, 4096, 1024), 0, 512]  # out of order, one overlapping
        for first in firsts:
            plan.add([(IOASIDS, 7, None, ids_bytes(array("I", range(first, first + 1024))))])
        plan.add([(IOASIDS, 7, None, ids_bytes(array("I", range(4500, 4600))))])  # apart
        statements: list[str] = []
        store.db.set_trace_callback(statements.append)
        rows = fold_into(store, plan)
        store.db.set_trace_callback(None)
        assert sorted(rows) == [*range(4096, 4500), *range(4600, 5000)]
        deletes = [s for s in statements if s.startswith("DELETE FROM ioasids WHERE id")]
        assert deletes == ["DELETE FROM ioasids WHERE id BETWEEN 0 AND 4095",
                           "DELETE FROM ioasids WHERE id BETWEEN 4500 AND 4599"]
    finally:
        store.close()
