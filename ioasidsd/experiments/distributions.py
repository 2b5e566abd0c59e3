"""Distributions of sampled quantities and arrival processes, as a policy file names them.

A distribution is a TOML table with ``dist`` (``fixed``, alias ``deterministic``, with
``value``; ``exponential`` with ``mean``; ``uniform`` with ``low`` and ``high``; ``lognormal``
with ``mean``, the distribution's own mean, and ``sigma``, that of the underlying normal;
``empirical`` with ``values`` and optional ``weights``, default equal, which need not sum to 1).
``parse_distribution`` checks one and returns a ``Distribution``; ``PolicyError`` names the key
and the reason. Sampling takes the run's ``random.Random``, so a run is a function of its seed.

A count (IOASIDs asked for) must come from an integer-valued distribution: ``fixed`` with an
integer, ``uniform`` (then an integer in [low, high]) or ``empirical`` of integers. A time
from ``uniform`` is a real in [low, high).

An arrival process is ``poisson`` (``rate``: exponential gaps of mean 1/rate), ``fixed``
(``interval``) or ``trace`` (``file``, replayed by ``ioasidsd.experiments.trace``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from math import log
from random import Random
from typing import Any

from ioasidsd.experiments.errors import PolicyError

DISTRIBUTIONS = ("fixed", "deterministic", "exponential", "uniform", "lognormal", "empirical")
ARRIVALS = ("poisson", "fixed", "trace")


@dataclass(frozen=True, slots=True)
class Distribution:
    """A checked distribution: ``kind`` (``fixed`` for its alias too) and its parameters.

    ``integer``: samples are integers (the distribution may give a count)."""

    kind: str
    params: tuple[float, ...]
    values: tuple[float, ...] = ()
    cum_weights: tuple[float, ...] = ()
    integer: bool = False

    @property
    def mean(self) -> float:
        """The distribution's mean."""
        kind, p = self.kind, self.params
        if kind in ("fixed", "exponential", "lognormal"):
            return p[0]
        if kind == "uniform":
            return (p[0] + p[1]) / 2
        total = self.cum_weights[-1]
        weights = [b - a for a, b in zip((0.0, *self.cum_weights), self.cum_weights, strict=False)]
        return sum(v * w for v, w in zip(self.values, weights, strict=True)) / total

    def sampler(self, rng: Random) -> Any:
        """A function of no arguments drawing one sample from ``rng`` (an ``int`` for an
        integer-valued distribution)."""
        kind, p = self.kind, self.params
        if kind == "fixed":
            value = int(p[0]) if self.integer else p[0]
            return lambda: value
        if kind == "exponential":
            return exponential(rng, 1.0 / p[0])
        if kind == "uniform":
            low, high = p
            if self.integer:
                randint = rng.randint
                return lambda: randint(int(low), int(high))
            rand = rng.random
            span = high - low
            return lambda: low + span * rand()
        if kind == "lognormal":
            mean, sigma = p
            mu = math.log(mean) - sigma * sigma / 2
            lognorm = rng.lognormvariate
            return lambda: lognorm(mu, sigma)
        values, cum = self.values, self.cum_weights
        if self.integer:
            values = tuple(int(v) for v in values)
        total, rand, last = cum[-1], rng.random, len(values) - 1
        return lambda: values[min(bisect_right(cum, rand() * total), last)]


def exponential(rng: Random, rate: float) -> Callable[[], float]:
    """A function of no arguments drawing from the exponential distribution of ``rate``:
    ``rng.expovariate(rate)``, the same numbers from the same generator, computed as
    ``Random.expovariate`` computes them but in one call (a tenant draws two: its arrival gap
    and its lifetime)."""
    rand = rng.random
    return lambda: -log(1.0 - rand()) / rate


def _number(table: Mapping[str, Any], key: str, where: str, *, positive: bool = False,
            non_negative: bool = False) -> float:
    if key not in table:
        raise PolicyError(f"{where}.{key}", "missing required key")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyError(f"{where}.{key}", f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise PolicyError(f"{where}.{key}", f"expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise PolicyError(f"{where}.{key}", f"must be positive, got {value!r}")
    if non_negative and value < 0:
        raise PolicyError(f"{where}.{key}", f"must not be negative, got {value!r}")
    return value


def _only(table: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in keys:
            raise PolicyError(f"{where}.{key}", "unknown key")


def parse_distribution(table: Any, where: str, *, count: bool = False) -> Distribution:
    """The distribution the TOML table ``table`` at key ``where`` describes. ``count``: it gives
    a count, so it must be integer-valued (and non-negative). ``PolicyError`` otherwise."""
    if not isinstance(table, Mapping):
        raise PolicyError(where, f"expected a table such as {{ dist = \"fixed\", value = 1 }}, "
                                 f"got {table!r}")
    kind = table.get("dist")
    if kind is None:
        raise PolicyError(f"{where}.dist", "missing required key")
    if kind not in DISTRIBUTIONS:
        raise PolicyError(f"{where}.dist", f"unknown distribution {kind!r}: expected one of "
                                           f"{', '.join(DISTRIBUTIONS)}")
    if kind == "deterministic":
        kind = "fixed"
    if kind == "fixed":
        _only(table, ("dist", "value"), where)
        value = _number(table, "value", where, non_negative=True)
        integer = isinstance(table["value"], int)
        if count and not integer:
            raise PolicyError(f"{where}.value", f"a count needs an integer, got {value!r}")
        return Distribution("fixed", (value,), integer=integer)
    if kind == "exponential":
        _only(table, ("dist", "mean"), where)
        if count:
            raise PolicyError(f"{where}.dist", "a count needs an integer-valued distribution "
                                               "(fixed, uniform or empirical), not exponential")
        return Distribution("exponential", (_number(table, "mean", where, positive=True),))
    if kind == "uniform":
        _only(table, ("dist", "low", "high"), where)
        low = _number(table, "low", where, non_negative=True)
        high = _number(table, "high", where, non_negative=True)
        if high < low:
            raise PolicyError(f"{where}.high", f"must not be below low ({low!r}), got {high!r}")
        if count and not (isinstance(table["low"], int) and isinstance(table["high"], int)):
            raise PolicyError(where, "a count needs integer low and high")
        return Distribution("uniform", (low, high), integer=count)
    if kind == "lognormal":
        _only(table, ("dist", "mean", "sigma"), where)
        if count:
            raise PolicyError(f"{where}.dist", "a count needs an integer-valued distribution "
                                               "(fixed, uniform or empirical), not lognormal")
        return Distribution("lognormal", (_number(table, "mean", where, positive=True),
                                          _number(table, "sigma", where, non_negative=True)))
    _only(table, ("dist", "values", "weights"), where)
    values = table.get("values")
    if values is None:
        raise PolicyError(f"{where}.values", "missing required key")
    if not isinstance(values, list) or not values:
        raise PolicyError(f"{where}.values", "expected a non-empty array of numbers")
    checked = tuple(_number({"v": v}, "v", f"{where}.values[{i}]", non_negative=True)
                    for i, v in enumerate(values))
    integer = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if count and not integer:
        raise PolicyError(f"{where}.values", "a count needs integer values")
    weights = table.get("weights", [1] * len(values))
    if not isinstance(weights, list) or len(weights) != len(values):
        raise PolicyError(f"{where}.weights", f"expected an array of {len(values)} numbers")
    w = [_number({"w": x}, "w", f"{where}.weights[{i}]", non_negative=True)
         for i, x in enumerate(weights)]
    if sum(w) <= 0:
        raise PolicyError(f"{where}.weights", "must not all be zero")
    return Distribution("empirical", (), checked, tuple(accumulate(w)), integer=integer)


@dataclass(frozen=True, slots=True)
class Arrival:
    """A checked arrival process: ``poisson`` (``rate``), ``fixed`` (``interval``) or
    ``trace`` (``file``, an absolute path)."""

    process: str
    rate: float = 0.0
    interval: float = 0.0
    file: str = ""

    def gaps(self, rng: Random) -> Any:
        """A function of no arguments giving the time to the next arrival."""
        if self.process == "poisson":
            return exponential(rng, self.rate)
        interval = self.interval
        return lambda: interval


def parse_arrival(table: Any, where: str, base: str) -> Arrival:
    """The arrival process the TOML table ``table`` at key ``where`` describes; a trace's
    relative ``file`` is relative to the directory ``base``. ``PolicyError`` otherwise."""
    import os

    if not isinstance(table, Mapping):
        raise PolicyError(where, f"expected a table such as {{ process = \"poisson\", "
                                 f"rate = 1.0 }}, got {table!r}")
    process = table.get("process")
    if process is None:
        raise PolicyError(f"{where}.process", "missing required key")
    if process not in ARRIVALS:
        raise PolicyError(f"{where}.process", f"unknown arrival process {process!r}: expected "
                                              f"one of {', '.join(ARRIVALS)}")
    if process == "poisson":
        _only(table, ("process", "rate"), where)
        return Arrival("poisson", rate=_number(table, "rate", where, positive=True))
    if process == "fixed":
        _only(table, ("process", "interval"), where)
        return Arrival("fixed", interval=_number(table, "interval", where, positive=True))
    _only(table, ("process", "file"), where)
    file = table.get("file")
    if not isinstance(file, str) or not file:
        raise PolicyError(f"{where}.file", "expected the path of a trace (a string)")
    return Arrival("trace", file=os.path.normpath(os.path.join(base, file)))
