"""Parsing and rendering of the cgroup files (``ioasidsd/model/formats.py``).

The rules were checked against the kernel sources (``lib/kstrtox.c``, ``lib/ctype.c``,
``kernel/cgroup/pids.c`` ``pids_max_write``, ``kernel/cgroup/cgroup.c``
``cgroup_procs_write_start`` and ``cgroup_file_write``, ``fs/kernfs/file.c``):

* kernfs copies the written bytes and NUL-terminates them, and every parser works on that C
  string: bytes after an embedded NUL are never seen;
* ``kstrtoll(s, 0)``: an optional ``+``/``-``, then the base from the prefix (``0x``/``0X``
  followed by a hex digit: 16; any other leading ``0``: 8; else 10), at least one digit, at most
  one ``\\n``, nothing else. Overflow of u64 while parsing is ``ERANGE`` (checked before junk);
  a magnitude beyond s64 is ``ERANGE``; anything else malformed is ``EINVAL``;
* ``ioasids.max`` (like ``pids.max``): ``strstrip`` (the kernel's ``isspace``: space, ``\\t``
  ``\\n`` ``\\v`` ``\\f`` ``\\r`` and 0xA0), then the literal ``max`` or ``kstrtoll``; negative is
  ``EINVAL``;
* flag files (``write_u64`` handlers): ``kstrtoull`` with no stripping;
* ``cgroup.procs``/``tasks``: ``kstrtoint`` of the stripped text; *every* failure, overflow
  included, and a negative pid are ``EINVAL``.
"""

from __future__ import annotations

from errno import EINVAL, ERANGE

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ioasidsd.model.formats import (
    S64_MAX,
    kstrtoll,
    parse_flag,
    parse_limit,
    parse_pid,
    render_capacity,
    render_count,
    render_events,
    render_flag,
    render_ids,
    render_limit,
)

from .helpers import refused

S64_MIN = -(1 << 63)
U64_MAX = (1 << 64) - 1


# --------------------------------------------------------------------------- kstrtoll


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0), ("7", 7), ("42", 42), ("+42", 42), ("-42", -42), ("-0", 0), ("+0", 0),
        ("0x10", 16), ("0X1f", 31), ("0xABCdef", 0xABCDEF), ("-0x10", -16), ("+0x10", 16),
        ("010", 8), ("0777", 0o777), ("-010", -8), ("00", 0), ("0", 0),
        ("5\n", 5), ("0x10\n", 16),
        (str(S64_MAX), S64_MAX), (str(S64_MIN), S64_MIN),
        ("0x7fffffffffffffff", S64_MAX), ("-0x8000000000000000", S64_MIN),
        ("0777777777777777777777", S64_MAX), ("-01000000000000000000000", S64_MIN),
        ("0000000000000000000000000000042", 0o42),
    ],
)
def test_kstrtoll_accepts(text: str, value: int) -> None:
    assert kstrtoll(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "", "+", "-", "\n", " 5", "5 ", "5\n\n", "\n5", "5\r", "5\t",  # no stripping here
        "08", "09", "0x", "0xg", "0x\n", "x10", "0b101", "1e3", "1.5", "1_000", "５",
        "+-5", "-+5", "--5", "++5", "- 5", "5-", "0x-5", "max",
    ],
)
def test_kstrtoll_rejects_junk(text: str) -> None:
    with refused(EINVAL):
        kstrtoll(text)


@pytest.mark.parametrize(
    "text",
    [
        str(S64_MAX + 1), str(U64_MAX), str(U64_MAX + 1), "99999999999999999999",
        str(S64_MIN - 1), "-" + str(U64_MAX), "-18446744073709551616",
        "0x8000000000000000", "0xffffffffffffffff", "0x10000000000000000",
        "01000000000000000000000",
        "99999999999999999999junk",  # overflow is found before the junk
    ],
)
def test_kstrtoll_out_of_range(text: str) -> None:
    with refused(ERANGE):
        kstrtoll(text)


@given(st.integers(S64_MIN, S64_MAX), st.sampled_from(["dec", "hex", "oct"]), st.booleans())
def test_kstrtoll_round_trips_every_s64(value: int, base: str, newline: bool) -> None:
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    digits = {"dec": str(magnitude), "hex": f"0x{magnitude:x}", "oct": f"0{magnitude:o}"}[base]
    assert kstrtoll(sign + digits + ("\n" if newline else "")) == value


@given(st.one_of(st.integers(S64_MAX + 1, 1 << 80), st.integers(-(1 << 80), S64_MIN - 1)))
def test_kstrtoll_beyond_s64(value: int) -> None:
    with refused(ERANGE):
        kstrtoll(str(value))


# --------------------------------------------------------------------------- ioasids.max


@pytest.mark.parametrize(
    ("data", "limit"),
    [
        ("5", 5), (" 5 ", 5), ("\t5\n", 5), ("5\n\n\n", 5), ("\v\f\r 5", 5), (b"5\n", 5),
        ("0", 0), ("-0", 0), ("+7", 7), ("0x10", 16), ("010", 8), (str(S64_MAX), S64_MAX),
        ("max", None), (" max\n", None), (b"\tmax\n", None),
        (b"5\x00junk", 5), (b"max\x00\xff", None),  # the kernel's C string ends at NUL
        (b"5\xa0", 5), (b"\xa0max", None),  # 0xA0 is white space to the kernel's isspace
    ],
)
def test_parse_limit_accepts(data: str | bytes, limit: int | None) -> None:
    assert parse_limit(data) == limit


@pytest.mark.parametrize(
    "data",
    [
        "-1", "-5", str(S64_MIN), "-0x10",  # negative
        "", "   ", "\n", b"\x00", b"\x005",  # empty
        "MAX", "Max", "max max", "maxi", "max5", "5max", "five", "1 2", "0x", "08",
        b"\xff", b"5\xff", "５",
    ],
)
def test_parse_limit_rejects(data: str | bytes) -> None:
    with refused(EINVAL):
        parse_limit(data)


@pytest.mark.parametrize("data", [str(S64_MAX + 1), str(S64_MIN - 1), "99999999999999999999"])
def test_parse_limit_out_of_range(data: str) -> None:
    with refused(ERANGE):
        parse_limit(data)


@given(st.one_of(st.none(), st.integers(0, S64_MAX)))
def test_limit_round_trips(limit: int | None) -> None:
    assert parse_limit(render_limit(limit)) == limit


# --------------------------------------------------------------------------- flags, pids


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ("1", True), ("0", False), ("2", True), ("+1", True), ("1\n", True), ("0\n", False),
        ("0x10", True), ("00", False), (str(U64_MAX), True), (b"1\x00junk", True),
    ],
)
def test_parse_flag_accepts(data: str | bytes, value: bool) -> None:
    assert parse_flag(data) is value


@pytest.mark.parametrize("data", [" 1", "1 ", "\t0", "1\n\n", "-1", "-0", "", "yes", "on", "1x"])
def test_parse_flag_rejects_without_stripping(data: str) -> None:
    with refused(EINVAL):
        parse_flag(data)


def test_parse_flag_out_of_range() -> None:
    with refused(ERANGE):
        parse_flag(str(U64_MAX + 1))


@pytest.mark.parametrize(
    ("data", "pid"),
    [("123", 123), (" 123\n", 123), ("0", 0), ("0x10", 16), ("2147483647", 2147483647),
     (b"42\x00junk", 42), (b"42\xa0", 42)],
)
def test_parse_pid_accepts(data: str | bytes, pid: int) -> None:
    assert parse_pid(data) == pid


@pytest.mark.parametrize(
    "data",
    ["-1", "abc", "", "1 2", "2147483648", "-2147483649", "99999999999999999999", "0x80000000"],
)
def test_parse_pid_refuses_everything_else_with_einval(data: str) -> None:
    """``if (kstrtoint(...) || pid < 0) return -EINVAL``: overflow too is ``EINVAL`` here."""
    with refused(EINVAL):
        parse_pid(data)


# --------------------------------------------------------------------------- rendering


def test_render_exact_bytes() -> None:
    assert render_limit(None) == "max\n"
    assert render_limit(0) == "0\n"
    assert render_limit(5) == "5\n"
    assert render_limit(S64_MAX) == "9223372036854775807\n"
    assert render_count(0) == "0\n"
    assert render_count(-1) == "-1\n"  # an uncharge below zero is shown as the kernel's %lld
    assert render_events(0) == "max 0\n"
    assert render_events(12) == "max 12\n"
    assert (render_flag(True), render_flag(False)) == ("1\n", "0\n")
    assert render_ids([30, 1, 200]) == "1\n30\n200\n"
    assert render_ids([]) == ""
    assert render_capacity(1048576, 1015808) == "capacity 1048576\navailable 1015808\n"
