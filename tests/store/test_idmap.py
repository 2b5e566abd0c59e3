"""``ioasidsd.store.idmap.IdMap`` behaves as a dict from IDs to values."""

from __future__ import annotations

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.store.idmap import IdMap

ids = st.integers(0, (1 << 32) - 1) | st.integers(65_000, 200_000)
writes = st.lists(st.one_of(
    st.tuples(st.just("one"), ids, st.integers(0, 5)),
    st.tuples(st.just("run"), st.integers(60_000, 140_000), st.integers(0, 70_000),
              st.integers(0, 5)),
    st.tuples(st.just("many"), st.lists(ids, max_size=20), st.integers(0, 5)),
    st.tuples(st.sampled_from(["array", "tuple", "list", "range"]), st.integers(60_000, 140_000),
              st.integers(0, 70_000), st.integers(0, 5)),
), max_size=12)
runs = st.tuples(st.sampled_from(["array", "tuple", "list", "range"]), st.integers(60_000, 140_000),
                 st.integers(0, 70_000))


def _ascending(kind: str, start: int, length: int):
    ids = range(start, start + length)
    if kind == "range":
        return ids
    return array("I", ids) if kind == "array" else tuple(ids) if kind == "tuple" else list(ids)


@settings(deadline=None)  # a chunk of 65,536 IDs is made per write: slow on a busy machine
@given(writes=writes, probes=st.lists(ids, max_size=30), probe_runs=st.lists(runs, max_size=3))
def test_an_idmap_answers_as_a_dict(writes, probes, probe_runs):
    model: dict[int, int] = {}
    idmap = IdMap()
    for write in writes:
        if write[0] == "one":
            _, i, value = write
            idmap.set(i, value)
            model[i] = value
        elif write[0] == "run":  # a set of consecutive IDs: the chunk-at-a-time path
            _, start, length, value = write
            run = set(range(start, start + length))
            idmap.set_many(run, value)
            model.update(dict.fromkeys(run, value))
        elif write[0] in ("array", "tuple", "list", "range"):  # ascending: the chunk-at-a-time path
            kind, start, length, value = write
            idmap.set_many(_ascending(kind, start, length), value)
            model.update(dict.fromkeys(range(start, start + length), value))
        else:
            _, many, value = write
            idmap.set_many(many, value)
            model.update(dict.fromkeys(many, value))
    for i in [*probes, *list(model)[:50]]:
        assert idmap.get(i) == model.get(i)
    for value in range(6):
        assert list(idmap.ids_of(value)) == sorted(i for i, v in model.items() if v == value)
        batch = [*probes, *list(model)[:50]]
        assert idmap.all_map_to(batch, value) == all(model.get(i) == value for i in batch)
        for kind, start, length in probe_runs:  # consecutive: compared a chunk at a time
            run = _ascending(kind, start, length)
            assert idmap.all_map_to(run, value) == all(model.get(i) == value for i in run)
    assert idmap.get(-1) is None
    assert not idmap.all_map_to([-1], 0)
