"""Bit fields of hardware words, named by their inclusive ``(hi, lo)`` bit positions.

The VT-d specification and the kernel describe every register and memory-resident structure as
fields of 64-bit words ("PSS, bits 39:35"). The codecs of this package keep those positions in
tables of ``Field`` and use the two functions below, so a position is written once, as in the
specification, and a round trip through encode and decode is exact.
"""

from __future__ import annotations

from typing import NamedTuple

U64_MASK = (1 << 64) - 1


class Field(NamedTuple):
    """A field of a word: bits ``hi`` down to ``lo``, inclusive."""

    hi: int
    lo: int

    @property
    def width(self) -> int:
        return self.hi - self.lo + 1

    @property
    def mask(self) -> int:
        """The field's bits in place."""
        return ((1 << self.width) - 1) << self.lo

    @property
    def max(self) -> int:
        """The largest value the field holds."""
        return (1 << self.width) - 1


def bit(n: int) -> Field:
    """A one-bit field at position ``n``."""
    return Field(n, n)


def get(word: int, field: Field) -> int:
    """The value of ``field`` in ``word``."""
    return (word >> field.lo) & ((1 << field.width) - 1)


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
