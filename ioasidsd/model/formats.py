"""The text formats of the cgroup files: parsing as the kernel does, rendering exactly.

Parsing follows ``pids_max_write`` (``kernel/cgroup/pids.c``): strip surrounding white space,
accept the literal ``max``, otherwise ``kstrtoll(buf, 0, ...)``: an optional sign, automatic base
(``0x`` hexadecimal, a leading ``0`` octal, else decimal), one optional trailing newline. Junk is
``EINVAL``, a value outside signed 64 bits is ``ERANGE``, a negative limit is ``EINVAL``.

Parsers see what a kernel write handler sees: kernfs NUL-terminates the written bytes, so the
text ends at the first NUL, and it is bytes, one character per byte (the kernel's ``isspace``
counts 0xA0 as white space).

Text the kernel stores as written (``release_agent``) may hold any byte but NUL. The model keeps
it as ``str`` decoded from UTF-8 with ``surrogateescape``, as Python (and mfusepy) decode file
names: ``text.encode("utf-8", "surrogateescape")`` gives back exactly the bytes written.
"""

from __future__ import annotations

from errno import EINVAL, ERANGE

from ioasidsd.model.errors import IoasidError

MAX = "max"
S64_MAX = (1 << 63) - 1
U64_MAX = (1 << 64) - 1
_WHITESPACE = " \t\n\v\f\r\xa0"  # isspace() of lib/ctype.c
_WHITESPACE_BYTES = _WHITESPACE.encode("latin-1")


def _kstrtoull(text: str) -> int:
    """``_kstrtoull(s, 0)``: digits in the automatic base, then at most one newline."""
    base = 10
    if text[:1] == "0":
        if text[1:2] in ("x", "X") and text[2:3] and text[2:3] in "0123456789abcdefABCDEF":
            base = 16
            text = text[2:]
        else:
            base = 8
    digits = "0123456789abcdef"[:base]
    i = 0
    value = 0
    overflow = False
    while i < len(text) and text[i].lower() in digits:
        value = value * base + digits.index(text[i].lower())
        if value > U64_MAX:
            overflow = True
        i += 1
    if overflow:
        raise IoasidError(ERANGE, "number out of range")
    if i == 0:
        raise IoasidError(EINVAL, "not a number")
    rest = text[i:]
    if rest[:1] == "\n":
        rest = rest[1:]
    if rest:
        raise IoasidError(EINVAL, "junk after the number")
    return value


def kstrtoll(text: str) -> int:
    """The kernel's ``kstrtoll(text, 0)``: a signed 64-bit integer in automatic base.

    Raises ``EINVAL`` for malformed text and ``ERANGE`` for overflow.
    """
    if text[:1] == "-":
        value = _kstrtoull(text[1:])
        if value > S64_MAX + 1:
            raise IoasidError(ERANGE, "number out of range")
        return -value
    if text[:1] == "+":
        text = text[1:]
    value = _kstrtoull(text)
    if value > S64_MAX:
        raise IoasidError(ERANGE, "number out of range")
    return value


def parse_release_agent(data: bytes | str) -> str:
    """Parse a write to ``release_agent`` as ``cgroup_release_agent_write`` does: the bytes up
    to the first NUL, with white space stripped at both ends (``strstrip``: the kernel's
    ``isspace``, 0xA0 included), every other byte kept whatever it is. Returns them as text
    decoded from UTF-8 with ``surrogateescape`` (see the module's documentation), so that
    encoding it back gives exactly those bytes.

    A ``str`` is taken as the bytes it encodes to (UTF-8, ``surrogateescape``); one that has no
    such bytes (a lone surrogate outside U+DC80..U+DCFF) is ``EINVAL``. Bytes never fail.
    """
    if isinstance(data, str):
        try:
            data = data.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise IoasidError(EINVAL, "text with no bytes to write") from None
    raw = data.split(b"\0", 1)[0].strip(_WHITESPACE_BYTES)
    return raw.decode("utf-8", "surrogateescape")


def _c_string(data: bytes | str) -> str:
    """The written data as the kernel's C string: up to the first NUL, one character per byte."""
    if isinstance(data, bytes):
        data = data.decode("latin-1")
    return data.split("\0", 1)[0]


def parse_limit(data: bytes | str) -> int | None:
    """Parse a write to ``ioasids.max``: ``None`` for ``max``, else a limit >= 0.

    ``EINVAL`` for junk or a negative number, ``ERANGE`` beyond signed 64 bits.
    """
    text = _c_string(data).strip(_WHITESPACE)
    if text == MAX:
        return None
    value = kstrtoll(text)
    if value < 0:
        raise IoasidError(EINVAL, f"negative limit {value}")
    return value


def parse_flag(data: bytes | str) -> bool:
    """Parse a write to ``notify_on_release`` or ``cgroup.clone_children``: a u64, nonzero is
    true. Like ``cgroup_file_write`` with a ``write_u64`` handler it does **not** strip: only an
    optional ``+`` and one trailing newline are accepted around the digits. ``EINVAL``/``ERANGE``.
    """
    text = _c_string(data)
    if text[:1] == "+":
        text = text[1:]
    return _kstrtoull(text) != 0


def parse_pid(data: bytes | str) -> int:
    """Parse a write to ``cgroup.procs`` or ``tasks``: ``kstrtoint`` of the stripped text, a
    pid >= 0 (0 means the writer itself). Like ``cgroup_procs_write_start``, every failure is
    ``EINVAL``: junk, a negative pid and a value beyond a signed 32-bit int alike."""
    text = _c_string(data).strip(_WHITESPACE)
    try:
        value = kstrtoll(text)
    except IoasidError as exc:
        raise IoasidError(EINVAL, f"invalid pid: {exc.strerror}") from None
    if not 0 <= value < (1 << 31):
        raise IoasidError(EINVAL, f"invalid pid {value}")
    return value


def render_limit(limit: int | None) -> str:
    """``ioasids.max``: ``max`` or the decimal limit, with a newline."""
    return f"{MAX}\n" if limit is None else f"{limit}\n"


def render_count(value: int) -> str:
    """A counter file (``ioasids.current``, ``ioasids.peak``): decimal and a newline."""
    return f"{value}\n"


def render_events(refusals: int) -> str:
    """``ioasids.events`` and ``ioasids.events.local``: ``max N``."""
    return f"max {refusals}\n"


def render_flag(value: bool) -> str:
    """``notify_on_release``, ``cgroup.clone_children``, ``cgroup.sane_behavior``."""
    return "1\n" if value else "0\n"


def render_ids(ids: list[int]) -> str:
    """``cgroup.procs`` and ``tasks``: one id a line, ascending."""
    return "".join(f"{i}\n" for i in sorted(ids))


def render_capacity(capacity: int, available: int) -> str:
    """``ioasids.capacity`` on the root (fixed profile): two keyed lines."""
    return f"capacity {capacity}\navailable {available}\n"


# ---------------------------------------------------------------------- cgroup v2 core files
INT_MAX = (1 << 31) - 1


def parse_subtree_control(data: bytes | str, known: tuple[str, ...],
                          ) -> tuple[frozenset[str], frozenset[str]]:
    """Parse a write to ``cgroup.subtree_control`` as ``cgroup_subtree_control_write``: the
    stripped text split at spaces (only spaces: a tab stays in its token), empty tokens skipped,
    each ``+name`` or ``-name`` of a controller in ``known``; the last token naming a controller
    wins. Returns ``(enable, disable)``. ``EINVAL`` for any other token (no sign, an unknown
    name)."""
    text = _c_string(data).strip(_WHITESPACE)
    enable: set[str] = set()
    disable: set[str] = set()
    for token in text.split(" "):
        if not token:
            continue
        name = token[1:]
        if name not in known or token[0] not in "+-":
            raise IoasidError(EINVAL, f"invalid token {token!r}")
        if token[0] == "+":
            enable.add(name)
            disable.discard(name)
        else:
            disable.add(name)
            enable.discard(name)
    return frozenset(enable), frozenset(disable)


def parse_hierarchy_limit(data: bytes | str) -> int | None:
    """Parse a write to ``cgroup.max.depth`` or ``cgroup.max.descendants``: stripped, ``max``
    (``None``) or ``kstrtoint`` in automatic base; ``EINVAL`` for junk, ``ERANGE`` for a
    negative value or one beyond a signed 32-bit int. ``INT_MAX`` is ``max``, as the kernel
    stores it."""
    text = _c_string(data).strip(_WHITESPACE)
    if text == MAX:
        return None
    value = kstrtoll(text)
    if not -(1 << 31) <= value <= INT_MAX or value < 0:
        raise IoasidError(ERANGE, f"{value} is out of range")
    return None if value == INT_MAX else value


def parse_cgroup_type(data: bytes | str) -> str:
    """Parse a write to ``cgroup.type``: only ``threaded`` (stripped) is accepted; ``EINVAL``
    for anything else, ``domain`` included."""
    text = _c_string(data).strip(_WHITESPACE)
    if text != "threaded":
        raise IoasidError(EINVAL, "only threaded can be written to cgroup.type")
    return text


def parse_freeze(data: bytes | str) -> bool:
    """Parse a write to ``cgroup.freeze``: ``kstrtoint`` of the stripped text in automatic
    base; ``EINVAL`` for junk, ``ERANGE`` for a number other than ``0`` (thaw) or ``1``
    (freeze)."""
    value = kstrtoll(_c_string(data).strip(_WHITESPACE))
    if value not in (0, 1):
        raise IoasidError(ERANGE, f"{value}: cgroup.freeze takes 0 or 1")
    return value == 1


def parse_kill(data: bytes | str) -> None:
    """Parse a write to ``cgroup.kill``: ``kstrtoint`` of the stripped text in automatic base;
    ``EINVAL`` for junk, ``ERANGE`` for a number other than ``1``."""
    value = kstrtoll(_c_string(data).strip(_WHITESPACE))
    if value != 1:
        raise IoasidError(ERANGE, f"{value}: cgroup.kill takes only 1")


def render_names(names: tuple[str, ...]) -> str:
    """``cgroup.controllers`` and ``cgroup.subtree_control``: names separated by a space and a
    newline; nothing at all (not even a newline) when there is none."""
    return " ".join(names) + "\n" if names else ""


def render_hierarchy_limit(value: int | None) -> str:
    """``cgroup.max.depth`` and ``cgroup.max.descendants``: ``max`` or the number."""
    return f"{MAX}\n" if value is None else f"{value}\n"


def render_keyed(pairs: list[tuple[str, int]]) -> str:
    """A flat-keyed file (``cgroup.events``, ``cgroup.stat``): ``key value`` lines."""
    return "".join(f"{key} {value}\n" for key, value in pairs)
