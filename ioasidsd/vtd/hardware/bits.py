"""Bit fields of hardware words, named by their inclusive ``(hi, lo)`` bit positions.

The VT-d specification and the kernel describe every register and memory-resident structure as
fields of 64-bit words ("PSS, bits 39:35"). The codecs of this package keep those positions in
tables of ``Field`` and use the two functions below, so a position is written once, as in the
specification, and a round trip through encode and decode is exact.
"""

from __future__ import annotations

U64_MASK = (1 << 64) - 1


class Field:
    """A field of a word: bits ``hi`` down to ``lo``, inclusive. ``width``, ``max`` (the
    largest value it holds) and ``mask`` (its bits in place) are computed once."""

    __slots__ = ("hi", "lo", "mask", "max", "width")

    def __init__(self, hi: int, lo: int) -> None:
        if not 0 <= lo <= hi:
            raise ValueError(f"bad field {hi}:{lo}")
        self.hi = hi
        self.lo = lo
        self.width = hi - lo + 1
        self.max = (1 << self.width) - 1
        self.mask = self.max << lo

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Field) and (self.hi, self.lo) == (other.hi, other.lo)

    def __hash__(self) -> int:
        return hash((self.hi, self.lo))

    def __repr__(self) -> str:
        return f"Field({self.hi}, {self.lo})"


def bit(n: int) -> Field:
    """A one-bit field at position ``n``."""
    return Field(n, n)


def get(word: int, field: Field) -> int:
    """The value of ``field`` in ``word``."""
    return (word >> field.lo) & field.max


def put(word: int, field: Field, value: int) -> int:
    """``word`` with ``field`` set to ``value``; ``ValueError`` if the value does not fit."""
    if not 0 <= value <= field.max:
        raise ValueError(f"value {value:#x} does not fit bits {field.hi}:{field.lo}")
    return (word & ~field.mask) | (value << field.lo)


def pack(fields: dict[str, Field], values: dict[str, int]) -> int:
    """One word from named field values (missing names are 0); ``ValueError`` on overflow."""
    word = 0
    for name, value in values.items():
        word = put(word, fields[name], int(value))
    return word


def unpack(fields: dict[str, Field], word: int) -> dict[str, int]:
    """Every named field of ``word``."""
    return {name: get(word, field) for name, field in fields.items()}
