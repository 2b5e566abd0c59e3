"""The ``IOASIDsMax=`` property of a slice and the daemon's default for it.

Values, as systemd spells ``TasksMax=``:

- a count of IOASIDs: decimal digits, ``0`` included (the controller's limit 0 forbids
  allocation, so unlike ``TasksMax=`` it is meaningful here);
- a share of the system's capacity: ``N%`` with up to two decimals, at most ``100%``; it is
  resolved against the capacity when the limit is written, rounding down;
- ``infinity``: no limit (the controller's ``max``).

Anything else (blanks inside, quotes, a sign, hexadecimal, ``Infinity``, ``101%``) is
refused with ``InvalidIOASIDsMax``, a ``ValueError`` whose message names the value and,
for a unit, the file and line it came from.

The property is read from the ``[Slice]`` section under either spelling, ``IOASIDsMax=`` or
``X-IOASIDsMax=`` (systemd ignores keys starting with ``X-`` without a warning, so that is
the spelling to write into systemd's own directories). Both spellings are one setting: the
last assignment of either wins, an empty assignment resets it to the default, and any
assignment that is not a valid value makes the whole property invalid (the daemon then keeps
the limit it had).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ioasidsd.slices.syntax import Assignment
from ioasidsd.slices.units import Unit

__all__ = [
    "INFINITY",
    "PROPERTY_KEYS",
    "PROPERTY_SECTION",
    "ConfiguredLimit",
    "IOASIDsMax",
    "InvalidIOASIDsMax",
    "configured_ioasids_max",
    "parse_default_ioasids_max",
    "parse_ioasids_max",
]

PROPERTY_SECTION = "Slice"
PROPERTY_KEYS = ("IOASIDsMax", "X-IOASIDsMax")

_COUNT = re.compile(r"[0-9]+")
_PERCENT = re.compile(r"([0-9]+)(?:\.([0-9]{1,2}))?%")


class InvalidIOASIDsMax(ValueError):
    """A value that is not a count, a percentage of at most 100% or ``infinity``."""


@dataclass(frozen=True)
class IOASIDsMax:
    """One limit as configured: a count, a share of the capacity in hundredths of a percent
    (``permyriad``), or neither for ``infinity``."""

    count: int | None = None
    permyriad: int | None = None

    def resolve(self, capacity: int) -> int | None:
        """The limit for a system of ``capacity`` IOASIDs; None means no limit."""
        if self.count is not None:
            return self.count
        if self.permyriad is not None:
            return capacity * self.permyriad // 10000
        return None

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        if self.permyriad is not None:
            whole, hundredths = divmod(self.permyriad, 100)
            if not hundredths:
                return f"{whole}%"
            return f"{whole}.{hundredths:02d}".rstrip("0") + "%"
        return "infinity"


INFINITY = IOASIDsMax()


def parse_ioasids_max(text: str) -> IOASIDsMax:
    """Parse a value of ``IOASIDsMax=``; raises ``InvalidIOASIDsMax``."""
    if text == "infinity":
        return INFINITY
    if _COUNT.fullmatch(text):
        return IOASIDsMax(count=int(text))
    match = _PERCENT.fullmatch(text)
    if match:
        permyriad = int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))
        if permyriad <= 10000:
            return IOASIDsMax(permyriad=permyriad)
        raise InvalidIOASIDsMax(f"IOASIDsMax={text}: a percentage is at most 100%")
    raise InvalidIOASIDsMax(f"IOASIDsMax={text}: expected a number, N% or infinity")


def parse_default_ioasids_max(value: object) -> IOASIDsMax:
    """Parse the configuration's ``[units] default_ioasids_max``: a TOML integer or a string
    in ``IOASIDsMax=`` syntax. Raises ``InvalidIOASIDsMax`` naming the key."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidIOASIDsMax(f"[units] default_ioasids_max = {value}: negative")
        return IOASIDsMax(count=value)
    if isinstance(value, str):
        try:
            return parse_ioasids_max(value)
        except InvalidIOASIDsMax as err:
            raise InvalidIOASIDsMax(f"[units] default_ioasids_max = {value!r}: "
                                    "expected a number, \"N%\" or \"infinity\"") from err
    raise InvalidIOASIDsMax(f"[units] default_ioasids_max = {value!r}: "
                            "expected a number, \"N%\" or \"infinity\"")


@dataclass(frozen=True)
class ConfiguredLimit:
    """A unit's limit and where it came from: the assignment, or None for the default."""

    value: IOASIDsMax
    source: Assignment | None


def configured_ioasids_max(unit: Unit, default: IOASIDsMax,
                           section: str = PROPERTY_SECTION) -> ConfiguredLimit:
    """The limit ``unit`` configures, ``default`` if it sets none (or resets it last).

    Raises ``InvalidIOASIDsMax`` for the first assignment, in load order, that is not a
    valid value, its message starting with ``FILE:LINE:``.
    """
    last: tuple[IOASIDsMax, Assignment] | None = None
    for assignment in unit.assignments:
        if assignment.section != section or assignment.key not in PROPERTY_KEYS:
            continue
        if assignment.value == "":
            last = None
            continue
        try:
            last = (parse_ioasids_max(assignment.value), assignment)
        except InvalidIOASIDsMax as err:
            reason = str(err).split(": ", 1)[-1]
            raise InvalidIOASIDsMax(f"{assignment.path}:{assignment.line}: "
                                    f"{assignment.key}={assignment.value}: {reason}") from err
    if last is None:
        return ConfiguredLimit(default, None)
    return ConfiguredLimit(*last)
