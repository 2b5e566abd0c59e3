"""``ioasidsd.slices.limits``: ``IOASIDsMax=`` values, both spellings, and the default.

The grammar is ``TasksMax=``'s: ``systemd-analyze verify`` judges the same values given as
``TasksMax=``, and must agree except where IOASIDs depart on purpose (``0`` is a limit here;
only plain decimal counts are accepted).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ioasidsd.slices.limits import (
    INFINITY,
    InvalidIOASIDsMax,
    IOASIDsMax,
    configured_ioasids_max,
    parse_default_ioasids_max,
    parse_ioasids_max,
)
from ioasidsd.slices.units import SearchPath, load_unit
from tests.slices.oracle import needs_analyze, tasks_max_reads

GOOD = {
    "7": IOASIDsMax(count=7),
    "0": IOASIDsMax(count=0),
    "1048576": IOASIDsMax(count=1048576),
    "25%": IOASIDsMax(permyriad=2500),
    "0%": IOASIDsMax(permyriad=0),
    "100%": IOASIDsMax(permyriad=10000),
    "12.5%": IOASIDsMax(permyriad=1250),
    "12.55%": IOASIDsMax(permyriad=1255),
    "infinity": INFINITY,
}
BAD = ["", " 5", "5 ", "5 %", "101%", "100.01%", "12.555%", "-1", "+5", "0x10", "Infinity",
       "max", '"5"', "5k", "%", ".5%", "1e3"]
# Values systemd's TasksMax= takes differently, on purpose: 0 is the controller's limit that
# forbids allocation; a count is plain decimal (TasksMax= also reads a sign, hex and octal).
DEPARTURES = {"0", "+5", "0x10"}


@pytest.mark.parametrize(("text", "value"), GOOD.items())
def test_good_values(text: str, value: IOASIDsMax) -> None:
    assert parse_ioasids_max(text) == value


@pytest.mark.parametrize("text", BAD)
def test_bad_values(text: str) -> None:
    with pytest.raises(InvalidIOASIDsMax, match="IOASIDsMax="):
        parse_ioasids_max(text)


@needs_analyze
def test_systemd_judges_the_grammar(tmp_path: Path) -> None:
    values = [v for v in [*GOOD, *BAD] if v and v == v.strip()]
    (tmp_path / "t.slice").write_text("[Slice]\n" + "".join(f"TasksMax={v}\n" for v in values))
    refused = {value for _, _, value in tasks_max_reads("t.slice", [tmp_path], tmp_path)}
    ours = {v for v in values if v not in GOOD}
    assert refused ^ ours == DEPARTURES & set(values)


@pytest.mark.parametrize(("text", "capacity", "limit"), [
    ("7", 100, 7), ("25%", 100, 25), ("25%", 10, 2), ("12.5%", 1000, 125),
    ("100%", 1048576, 1048576), ("0%", 50, 0), ("33.33%", 3, 0), ("infinity", 5, None),
])
def test_resolve(text: str, capacity: int, limit: int | None) -> None:
    assert parse_ioasids_max(text).resolve(capacity) == limit


@pytest.mark.parametrize("text", ["7", "0", "25%", "12.5%", "12.05%", "infinity", "100%"])
def test_str_round_trips(text: str) -> None:
    assert str(parse_ioasids_max(text)) == text


def test_default() -> None:
    assert parse_default_ioasids_max("infinity") == INFINITY
    assert parse_default_ioasids_max("10%") == IOASIDsMax(permyriad=1000)
    assert parse_default_ioasids_max(64) == IOASIDsMax(count=64)
    assert parse_default_ioasids_max("64") == IOASIDsMax(count=64)
    for bad in [True, -1, 1.5, "lots", None, ["1"]]:
        with pytest.raises(InvalidIOASIDsMax, match=r"^\[units\] default_ioasids_max = "):
            parse_default_ioasids_max(bad)


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_both_spellings_are_one_setting(tmp_path: Path) -> None:
    default = IOASIDsMax(count=99)
    search = SearchPath((), (tmp_path,))
    unit_file = write(tmp_path, "t.slice", "[Slice]\nIOASIDsMax=10\n")
    limit = configured_ioasids_max(load_unit("t.slice", search), default)
    assert limit.value == IOASIDsMax(count=10) and limit.source is not None
    assert (limit.source.path, limit.source.line) == (str(unit_file), 2)
    dropin = write(tmp_path, "t.slice.d/50-x.conf", "[Slice]\nX-IOASIDsMax=20%\n")
    limit = configured_ioasids_max(load_unit("t.slice", search), default)
    assert limit.value == IOASIDsMax(permyriad=2000)
    assert limit.source is not None and limit.source.path == str(dropin)
    write(tmp_path, "t.slice.d/60-reset.conf", "[Slice]\nIOASIDsMax=\n")
    assert configured_ioasids_max(load_unit("t.slice", search), default).value == default
    # another section's IOASIDsMax= is not the slice's
    write(tmp_path, "t.slice.d/70-unit.conf", "[Unit]\nIOASIDsMax=3\n")
    limit = configured_ioasids_max(load_unit("t.slice", search), default)
    assert limit.value == default and limit.source is None


def test_no_property_gives_the_default(tmp_path: Path) -> None:
    write(tmp_path, "t.slice", "[Slice]\n")
    limit = configured_ioasids_max(load_unit("t.slice", SearchPath((), (tmp_path,))), INFINITY)
    assert limit.value == INFINITY and limit.source is None
    nothing = load_unit("nothing.slice", SearchPath((), (tmp_path,)))
    assert configured_ioasids_max(nothing, IOASIDsMax(count=1)).value == IOASIDsMax(count=1)


def test_junk_names_file_and_line_even_when_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, "t.slice", "[Slice]\n# limit\nX-IOASIDsMax=lots\nIOASIDsMax=5\n")
    unit = load_unit("t.slice", SearchPath((), (tmp_path,)))
    with pytest.raises(InvalidIOASIDsMax) as err:
        configured_ioasids_max(unit, INFINITY)
    assert str(err.value) == (f"{path}:3: X-IOASIDsMax=lots: "
                              "expected a number, N% or infinity")
    write(tmp_path, "t.slice", "[Slice]\nIOASIDsMax=150%\n")
    with pytest.raises(InvalidIOASIDsMax, match=r":2: IOASIDsMax=150%: .*at most 100%"):
        configured_ioasids_max(load_unit("t.slice", SearchPath((), (tmp_path,))), INFINITY)
