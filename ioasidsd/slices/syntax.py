"""Unit files in systemd's syntax: lines, sections, assignments, quoting.

The contract, as systemd reads a unit file or a drop-in:

- A line whose first non-blank character is ``#`` or ``;`` is a comment, also between the
  lines of a continuation (it neither ends the continuation nor joins it).
- A line that ends in a backslash that is not itself escaped (an odd number of backslashes
  at the very end, no blank after it) continues on the next line: the backslash becomes one
  space and the next line is appended as it is.
- Blanks around a line, around a section name's brackets, and around ``=`` are dropped.
- ``[Name]`` opens a section; a section named again later continues it. A header that does
  not end in ``]`` or holds no name makes the whole file fail to load, as in systemd: parsing
  stops there and ``ParsedFile.failure`` says where.
- ``Key=Value`` assigns; every assignment is kept, in order, with its file and line (the
  last physical line of a continuation), so repeated keys and the empty assignment that
  resets a list are visible to whoever interprets a setting (``Section.values``).
- What systemd ignores with a warning is a ``Diagnostic`` here, never an exception: a key
  outside any section, a line without ``=``, an empty key name.

Reading a file that cannot be read raises ``UnitReadError`` (an ``OSError`` wrapped with the
path). ``split_words`` is systemd's quoting for settings that take a list of words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Assignment",
    "Diagnostic",
    "ParsedFile",
    "UnitReadError",
    "parse_unit_text",
    "read_unit_file",
    "split_words",
]

_COMMENTS = "#;"
_BLANKS = " \t\n\r"
_BOM = "\ufeff"


@dataclass(frozen=True)
class Diagnostic:
    """A line that systemd would log and ignore: where it is and what is wrong with it."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass(frozen=True)
class Assignment:
    """One ``Key=Value`` line of a section, the value with its surrounding blanks dropped."""

    section: str
    key: str
    value: str
    path: str
    line: int


@dataclass
class ParsedFile:
    """One file's assignments in file order, and what systemd would have warned about."""

    path: str
    assignments: list[Assignment] = field(default_factory=list)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    failure: Diagnostic | None = None
    """Set when the file cannot be used at all (a bad section header)."""
    sections: list[tuple[int, str]] = field(default_factory=list)
    """Each section header: its line and the section's name."""


class UnitReadError(Exception):
    """A unit file or drop-in that exists but cannot be read (permissions, not text...)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _ends_in_escape(text: str) -> bool:
    """True when ``text`` ends in a backslash that no backslash before it escapes."""
    run = len(text) - len(text.rstrip("\\"))
    return run % 2 == 1


def parse_unit_text(text: str, path: str = "<text>") -> ParsedFile:
    """Parse a unit file's text; ``path`` only labels assignments and diagnostics.

    Never raises for bad content: what systemd ignores is returned as diagnostics.
    """
    parsed = ParsedFile(path)
    section: str | None = None
    pending: str | None = None
    if text.startswith(_BOM):
        text = text[len(_BOM):]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        stripped = raw.lstrip(_BLANKS)
        if stripped and stripped[0] in _COMMENTS:
            continue
        joined = raw if pending is None else pending + raw
        if _ends_in_escape(joined):
            pending = joined[:-1] + " "
            continue
        pending = None
        section = _parse_line(parsed, joined.strip(_BLANKS), number, section)
        if parsed.failure:
            return parsed
    if pending is not None:  # a continuation at the end of the file ends with it
        _parse_line(parsed, pending.strip(_BLANKS), len(lines), section)
    return parsed


def _parse_line(parsed: ParsedFile, line: str, number: int, section: str | None) -> str | None:
    def warn(message: str) -> None:
        parsed.diagnostics.append(Diagnostic(parsed.path, number, message))

    if not line:
        return section
    if line.startswith("["):
        name = line[1:-1].strip(_BLANKS) if line.endswith("]") and len(line) > 1 else ""
        if not name or "[" in name or "]" in name:
            parsed.failure = Diagnostic(parsed.path, number, f"invalid section header {line!r}")
            parsed.diagnostics.append(parsed.failure)
            return None
        parsed.sections.append((number, name))
        return name
    if section is None:
        warn("assignment outside of any section, ignored")
        return section
    key, equals, value = line.partition("=")
    if not equals:
        warn("missing '=', line ignored")
        return section
    key = key.strip(_BLANKS)
    if not key:
        warn("missing key name before '=', line ignored")
        return section
    parsed.assignments.append(Assignment(section, key, value.strip(_BLANKS), parsed.path,
                                         number))
    return section


def read_unit_file(path: Path) -> ParsedFile:
    """Read and parse one unit file or drop-in.

    Raises ``UnitReadError`` if it cannot be opened or is not UTF-8 text.
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise UnitReadError(str(path), err.strerror or str(err)) from err
    except UnicodeDecodeError as err:
        raise UnitReadError(str(path), f"not UTF-8 text (byte {err.start})") from err
    return parse_unit_text(text, str(path))


_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
                   "v": "\v", "\\": "\\", '"': '"', "'": "'", "s": " "}


def _unescape(text: str, at: int) -> tuple[str, int]:
    """The character a C-style escape at ``text[at]`` (after the backslash) stands for."""
    if at >= len(text):
        raise ValueError("a backslash ends the value")
    char = text[at]
    if char in _SIMPLE_ESCAPES:
        return _SIMPLE_ESCAPES[char], at + 1
    widths = {"x": 2, "u": 4, "U": 8}
    if char in widths:
        digits = text[at + 1:at + 1 + widths[char]]
        if len(digits) != widths[char] or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise ValueError(f"bad escape \\{char}{digits}")
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF:
            raise ValueError(f"escape \\{char}{digits} is not a character")
        return chr(code), at + 1 + widths[char]
    if char in "01234567":
        digits = text[at:at + 3]
        if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) == 0:
            raise ValueError(f"bad octal escape \\{digits}")
        return chr(int(digits, 8)), at + 3
    raise ValueError(f"unknown escape \\{char}")


def split_words(value: str) -> list[str]:
    """Split a setting's value into words as systemd does for settings that take lists.

    Words are separated by blanks; a word may be quoted with ``"`` or ``'`` (a quote starts
    at the beginning of a word only) and holds C-style escapes (``\\n``, ``\\t``, ``\\xNN``,
    ``\\NNN`` octal, ``\\uNNNN``, ``\\"``...), inside or outside quotes. Raises ``ValueError``
    for an unterminated quote or a bad escape.
    """
    words: list[str] = []
    at = 0
    while True:
        while at < len(value) and value[at] in _BLANKS:
            at += 1
        if at >= len(value):
            return words
        word: list[str] = []
        quote = value[at] if value[at] in "\"'" else None
        if quote:
            at += 1
        while True:
            if at >= len(value):
                if quote:
                    raise ValueError(f"unterminated quote {quote} in {value!r}")
                break
            char = value[at]
            if quote and char == quote:
                at += 1
                if at < len(value) and value[at] not in _BLANKS:
                    raise ValueError(f"text right after a closing quote in {value!r}")
                break
            if not quote and char in _BLANKS:
                break
            if char == "\\":
                decoded, at = _unescape(value, at + 1)
                word.append(decoded)
                continue
            word.append(char)
            at += 1
        words.append("".join(word))
