"""Closed forms of loss systems that experiments must agree with.

* ``erlang_b(load, servers)``: the blocking probability of an M/G/N/N loss system (Poisson
  arrivals of ``load`` Erlangs, any holding-time distribution with that mean, ``servers``
  IOASIDs): one pool, one IOASID per tenant. The recursion ``B(0) = 1``,
  ``B(n) = A·B(n-1) / (n + A·B(n-1))`` is numerically stable.
* ``kaufman_roberts(classes, capacity)``: per-class blocking when classes of Poisson tenants,
  each class ``(load, size)`` asking ``size`` IOASIDs at once, share one pool of ``capacity``:
  the occupancy distribution ``q(j) = (1/j) · Σ_k load_k · size_k · q(j - size_k)``, normalised,
  and a class blocks in the states where fewer than ``size`` IOASIDs are free.

Both are written here (a few lines each) because no well-kept Python library provides the
multi-rate form, and both are textbook formulas.
"""

from __future__ import annotations

from collections.abc import Sequence


def erlang_b(load: float, servers: int) -> float:
    """Erlang B: the probability that a tenant offered ``load`` Erlangs finds all ``servers``
    busy. ``ValueError`` for a negative load or server count."""
    if load < 0 or servers < 0:
        raise ValueError("load and servers must not be negative")
    b = 1.0
    for n in range(1, servers + 1):
        b = load * b / (n + load * b)
    return b


def kaufman_roberts(classes: Sequence[tuple[float, int]], capacity: int) -> list[float]:
    """The blocking probability of each class ``(load, size)`` sharing ``capacity``
    (see the module's documentation). ``ValueError`` for a size below 1."""
    if any(size < 1 for _, size in classes):
        raise ValueError("every class asks for at least 1")
    q = [0.0] * (capacity + 1)
    q[0] = 1.0
    for j in range(1, capacity + 1):
        q[j] = sum(load * size * q[j - size] for load, size in classes if size <= j) / j
    total = sum(q)
    return [sum(q[capacity - size + 1:]) / total if size <= capacity else 1.0
            for _, size in classes]
