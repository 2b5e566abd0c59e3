"""The unit's translation caches and the device TLBs, dropped only by invalidations.

* ``ContextCache``: context entries by source id.
* ``PasidCache``: PASID-table entries by (source id, PASID), each tagged with the entry's DID,
  so a PASID-selective invalidation with the wrong DID leaves it in place, as on hardware. A
  not-present entry (cached only in caching mode) has no DID: a PASID-selective invalidation
  of its PASID drops it whatever DID it names.
* ``Iotlb``: translations by (DID, PASID, page).
* ``DeviceTlb``: one per ATS device, by (PASID or ``None``, page).

Each cache counts hits, misses, fills and entries invalidated; ``invalidate_*`` return how many
entries they dropped (the unit counts "entries invalidated per descriptor").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    fills: int = 0
    invalidated: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "fills": self.fills,
                "invalidated": self.invalidated}


class _Cache(Generic[K]):
    def __init__(self) -> None:
        self.entries: dict[K, Any] = {}
        self.stats = CacheStats()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, key: K) -> Any:
        value = self.entries.get(key)
        if value is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return value

    def fill(self, key: K, value: Any) -> None:
        self.entries[key] = value
        self.stats.fills += 1

    def _drop(self, keep: Callable[[K, Any], bool]) -> int:
        before = len(self.entries)
        self.entries = {k: v for k, v in self.entries.items() if keep(k, v)}
        dropped = before - len(self.entries)
        self.stats.invalidated += dropped
        return dropped

    def invalidate_all(self) -> int:
        dropped = len(self.entries)
        self.entries.clear()
        self.stats.invalidated += dropped
        return dropped


@dataclass(frozen=True, slots=True)
class CachedPasidEntry:
    """A PASID-cache entry: the 512-bit entry as read, and the DID that tags it."""

    words: tuple[int, ...]
    did: int


class ContextCache(_Cache[int]):
    """Context entries by source id."""

    def invalidate_device(self, sid: int, fm: int = 0) -> int:
        """Device-selective: the source ids that match ``sid`` under function mask ``fm``
        (FM=1 ignores bit 2 of the function number, 2 bits 2:1, 3 all three)."""
        mask = 0xFFFF & ~(((1 << fm) - 1) << (3 - fm))
        return self._drop(lambda k, v: (k & mask) != (sid & mask))


class PasidCache(_Cache[tuple[int, int]]):
    """PASID entries by (sid, pasid), tagged by DID."""

    def invalidate_domain(self, did: int) -> int:
        return self._drop(lambda k, v: v.did != did)

    def invalidate_pasid(self, did: int, pasid: int) -> int:
        return self._drop(
            lambda k, v: not (k[1] == pasid and (v.did == did or not v.words[0] & 1)))


class Iotlb(_Cache[tuple[int, int, int]]):
    """Translations by (did, pasid, page number)."""

    def invalidate_domain(self, did: int) -> int:
        return self._drop(lambda k, v: k[0] != did)

    def invalidate_pages(self, did: int, pasid: int | None, page: int, npages: int) -> int:
        end = page + npages
        return self._drop(
            lambda k, v: not (k[0] == did and (pasid is None or k[1] == pasid)
                              and page <= k[2] < end)
        )

    def invalidate_pasid(self, did: int, pasid: int) -> int:
        return self._drop(lambda k, v: not (k[0] == did and k[1] == pasid))


class DeviceTlb(_Cache[tuple[int | None, int]]):
    """A device's ATS translation cache by (pasid or None, page number)."""

    def invalidate(self, pasid: int | None, every_pasid: bool,
                   byte_range: tuple[int, int] | None) -> int:
        def keep(k: tuple[int | None, int], v: Any) -> bool:
            if not every_pasid and k[0] != pasid:
                return True
            if byte_range is None:
                return False
            return not (byte_range[0] <= (k[1] << 12) < byte_range[1])

        return self._drop(keep)
