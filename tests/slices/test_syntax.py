"""``ioasidsd.slices.syntax``: a unit file read as systemd reads it.

Each file is checked twice: against the rules stated in the module, and, where
``systemd-analyze`` is installed, against what systemd itself reads from the same file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ioasidsd.slices.syntax import UnitReadError, parse_unit_text, read_unit_file, split_words
from tests.slices.oracle import needs_analyze, tasks_max_reads, verify

# A file that exercises every syntax rule; the TasksMax= values are not numbers so that
# systemd-analyze logs each one it reads.
TRICKY = (
    "\ufeff# a comment\n"
    "; another comment\n"
    "[Slice]\n"
    "TasksMax=v1\n"
    "  TasksMax  =  v2 with blanks  \n"
    "TasksMax=v3 \\\n"
    "# a comment inside a continuation\n"
    "  continued\\\\\n"
    "TasksMax=v4\\\\\\\n"
    "tail\n"
    "TasksMax=\n"
    "TasksMax=v5 \"quoted\" 'kept'\n"
    "[Unit]\n"
    "Description=between\n"
    "[Slice]\n"
    "TasksMax=v6=with=equals\n"
    "TasksMax=v7\r\n"
)


def reads(text: str, path: str = "f") -> list[tuple[str, int, str]]:
    parsed = parse_unit_text(text, path)
    return [(a.path, a.line, a.value) for a in parsed.assignments if a.key == "TasksMax"]


def test_rules_of_the_syntax() -> None:
    assert reads(TRICKY) == [
        ("f", 4, "v1"),
        ("f", 5, "v2 with blanks"),
        ("f", 8, "v3    continued\\\\"),
        ("f", 10, "v4\\\\ tail"),
        ("f", 11, ""),
        ("f", 12, "v5 \"quoted\" 'kept'"),
        ("f", 16, "v6=with=equals"),
        ("f", 17, "v7"),
    ]
    parsed = parse_unit_text(TRICKY, "f")
    assert parsed.failure is None and parsed.diagnostics == []
    assert [a.section for a in parsed.assignments].count("Unit") == 1


@needs_analyze
def test_systemd_reads_the_same(tmp_path: Path) -> None:
    (tmp_path / "tricky.slice").write_text(TRICKY)
    ours = [(p, n, v) for p, n, v in reads(TRICKY, str(tmp_path / "tricky.slice")) if v]
    assert tasks_max_reads("tricky.slice", [tmp_path], tmp_path) == ours


def test_ignored_lines_are_diagnostics_with_their_line() -> None:
    parsed = parse_unit_text("Key=outside\n[Slice]\nno equals sign\n=value\nGood=1\n", "u")
    assert [(d.line, d.message) for d in parsed.diagnostics] == [
        (1, "assignment outside of any section, ignored"),
        (3, "missing '=', line ignored"),
        (4, "missing key name before '=', line ignored"),
    ]
    assert str(parsed.diagnostics[0]).startswith("u:1: ")
    assert [(a.key, a.value) for a in parsed.assignments] == [("Good", "1")]
    assert parsed.failure is None


@pytest.mark.parametrize("header", ["[Slice", "[]", "[a]b]", "[ ]"])
def test_a_bad_section_header_fails_the_file(header: str) -> None:
    parsed = parse_unit_text(f"[Slice]\nA=1\n{header}\nB=2\n", "u")
    assert parsed.failure is not None and parsed.failure.line == 3
    assert [a.key for a in parsed.assignments] == ["A"]


@needs_analyze
def test_systemd_fails_a_file_with_a_bad_header(tmp_path: Path) -> None:
    (tmp_path / "bad.slice").write_text("[Slice\n")
    (tmp_path / "good.slice").write_text("[Slice]\n")
    log = verify(["./bad.slice", "./good.slice"], tmp_path)
    assert "bad.slice failed to load" in log and "good.slice" not in log
    assert parse_unit_text("[Slice\n").failure is not None


def test_a_continuation_at_the_end_of_the_file_ends_with_it() -> None:
    assert reads("[Slice]\nTasksMax=a \\\n") == [("f", 2, "a")]


def test_read_unit_file_errors(tmp_path: Path) -> None:
    with pytest.raises(UnitReadError) as missing:
        read_unit_file(tmp_path / "absent.slice")
    assert str(tmp_path / "absent.slice") in str(missing.value)
    binary = tmp_path / "binary.slice"
    binary.write_bytes(b"[Slice]\nA=\xff\n")
    with pytest.raises(UnitReadError, match="not UTF-8"):
        read_unit_file(binary)
    good = tmp_path / "good.slice"
    good.write_text("[Slice]\nA=1\n")
    assert read_unit_file(good).assignments[0].path == str(good)


@pytest.mark.parametrize(("value", "words"), [
    ("", []),
    ("a b\tc", ["a", "b", "c"]),
    ('"a b" c', ["a b", "c"]),
    ("'a \"b' c", ['a "b', "c"]),
    (r'"a\"b" \x41\101\u00e9', ['a"b', "AAé"]),
    (r"a\sb", ["a b"]),
    (r"tab\tnew\n", ["tab\tnew\n"]),
    ('x"y"', ['x"y"']),  # a quote inside a word is an ordinary character
])
def test_split_words(value: str, words: list[str]) -> None:
    assert split_words(value) == words


@pytest.mark.parametrize("value", ['"open', "'open", "end\\", r"\q", r"\x4", r"\x00",
                                   '"a"b'])
def test_split_words_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        split_words(value)
