"""``ioasidsd.slices.names``: unit-name validity and the slice-to-cgroup mapping.

Validity is judged by ``systemd-analyze verify`` (which refuses to load a unit whose name is
not valid) and escaping by ``systemd-escape``, where they are installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ioasidsd.slices.names import (
    ROOT_SLICE,
    InvalidUnitName,
    check_slice_name,
    check_unit_name,
    escape_cgroup_component,
    slice_ancestors,
    slice_parent,
    slice_to_cgroup_path,
)
from tests.slices.oracle import escape, needs_analyze, needs_escape, refused_names

VALID_SLICES = ["-.slice", "a.slice", "machine.slice", "machine-qemu\\x2d1.slice",
                "user-1000.slice", "a-b-c.slice", "a.b.slice", "a:b_c.slice", "_x.slice",
                "x" * 249 + ".slice"]
INVALID_SLICES = ["a--b.slice", "-a.slice", "a-.slice", "--.slice", "a@b.slice",
                  "a b.slice", "a.service", ".slice", "slice", "x" * 250 + ".slice",
                  "é.slice", "a.Slice"]


@pytest.mark.parametrize("name", VALID_SLICES)
def test_valid_slice_names(name: str) -> None:
    assert check_slice_name(name) == name


@pytest.mark.parametrize("name", INVALID_SLICES)
def test_invalid_slice_names(name: str) -> None:
    with pytest.raises(InvalidUnitName, match=r"\S"):
        check_slice_name(name)


@needs_analyze
def test_systemd_agrees_on_validity(tmp_path: Path) -> None:
    # names that can be file names (at most 255 bytes), all judged by systemd in one run
    names = [n for n in VALID_SLICES + INVALID_SLICES if n not in ("slice", ".slice")]
    names += ["a-b.scope", "x" * 249 + ".scope", "a.bogus"]
    # verify cannot be given a file name with ':' ("Couldn't process aliases"), though ':' is
    # a unit-name character (systemd-escape keeps it: test_escape_keeps_what_names_allow)
    names = [n for n in names if len(n.encode()) <= 255 and ":" not in n]
    ours = set()
    for name in names:
        try:
            if name.endswith(".slice"):
                check_slice_name(name)
            else:
                check_unit_name(name)
        except InvalidUnitName:
            ours.add(name)
    assert refused_names(names, tmp_path) == ours


def test_unit_names() -> None:
    assert check_unit_name("run-u7.scope") == "run-u7.scope"
    assert check_unit_name("ioasidsd.service") == "ioasidsd.service"
    for bad in ["", "a", "a.", "a.bogus", "a/b.slice", "a@b.service", "x" * 250 + ".scope"]:
        with pytest.raises(InvalidUnitName):
            check_unit_name(bad)


def test_parents_and_ancestors() -> None:
    assert slice_parent("-.slice") is None
    assert slice_parent("machine.slice") == ROOT_SLICE
    assert slice_parent("machine-qemu\\x2d1.slice") == "machine.slice"
    assert slice_parent("a-b-c.slice") == "a-b.slice"
    assert slice_ancestors("a-b-c.slice") == ["a.slice", "a-b.slice", "a-b-c.slice"]
    assert slice_ancestors(ROOT_SLICE) == []
    with pytest.raises(InvalidUnitName):
        slice_parent("a--b.slice")


@pytest.mark.parametrize(("name", "path"), [
    ("-.slice", "/"),
    ("machine.slice", "/machine.slice"),
    ("machine-qemu\\x2d1.slice", "/machine.slice/machine-qemu\\x2d1.slice"),
    ("foo-bar-baz.slice", "/foo.slice/foo-bar.slice/foo-bar-baz.slice"),
    ("_x.slice", "/__x.slice"),
    ("cpu.slice", "/_cpu.slice"),
    ("pids-a.slice", "/_pids.slice/pids-a.slice"),
    ("cpu.a.slice", "/cpu.a.slice"),  # the part before the last dot is "cpu.a"
    ("ioasids.slice", "/ioasids.slice"),  # not a controller systemd knows
])
def test_slice_to_cgroup_path(name: str, path: str) -> None:
    assert slice_to_cgroup_path(name) == path


def test_escape_cgroup_component() -> None:
    for name in ["tasks", "release_agent", "notify_on_release", "cgroup.procs", ".x", "_",
                 "memory.x", "bpf-firewall.y", ""]:
        assert escape_cgroup_component(name) == "_" + name
    for name in ["task", "x.tasks", "cgroupx", "memoryx.slice", "a"]:
        assert escape_cgroup_component(name) == name


@needs_escape
def test_escape_keeps_what_names_allow() -> None:
    kept = "az09:_.\\"
    assert escape("a:b_c") == ["a:b_c"]
    assert all(c in kept or c.isalnum() for c in escape("a:b_c")[0])
    assert check_slice_name("a:b_c.slice") == "a:b_c.slice"


@needs_escape
def test_escaped_machine_names_map_as_systemd_documents() -> None:
    words = ["qemu-1", "qemu-1-vm1", "a b", "ünï", "-lead", "x.y", "tenant_a"]
    escaped = escape(*words)
    assert escaped[0] == "qemu\\x2d1"
    for word, esc in zip(words, escaped, strict=True):
        name = f"machine-{esc}.slice"
        assert check_slice_name(name) == name, word
        assert slice_parent(name) == "machine.slice"
        assert slice_to_cgroup_path(name) == f"/machine.slice/{name}"
    # systemd-escape turns '/' into '-': the escaped word is then a path of slices
    [nested] = escape("a b/c")
    assert slice_to_cgroup_path(f"machine-{nested}.slice") == (
        "/machine.slice/machine-a\\x20b.slice/machine-a\\x20b-c.slice")


@needs_escape
@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=5))
def test_any_escaped_word_makes_a_valid_child_slice(words: list[str]) -> None:
    words = [w for w in words if "\x00" not in w and "/" not in w]
    if not words:
        return
    for esc in escape(*words):
        name = f"tenant-{esc}.slice"
        if len(name) > 255:
            continue
        assert check_slice_name(name) == name
        assert slice_to_cgroup_path(name) == f"/tenant.slice/{name}"
