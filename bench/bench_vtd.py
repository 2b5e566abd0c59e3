"""Benchmark of the VT-d simulation: bind+teardown cycles per second, and the
PASID-table pages for 2^20 bound PASIDs across 8 devices.

Throughput. One unit with default capabilities (PSS=19, CM=0), a device with ATS and PRI, the
``fixed`` profile:

* native cycle: ``bind_mm`` then ``unbind_mm`` of one process: a PASID from the host set, a
  first-level entry, then the teardown (PASID cache, P_IOTLB and PASID device-TLB
  invalidations, each with its wait) and the drain (fence wait, P_IOTLB, device TLB, PD wait);
* guest cycle: ``bind_gpasid`` then ``unbind_gpasid`` of a PASID the VMM holds: ownership
  check, SPID, private data and reference, a nested entry, the same teardown and drain.

The reference, run alternately in the same process, is the IOASID core's own part of a native
cycle without any VT-d: allocate one PASID from a NULL set and put it back. The ratio says how
many times a full simulated bind+teardown costs the bookkeeping alone. Best round of each.

Pages. A VMM owns 2^20 - 1 PASIDs (all but RID2PASID) and binds each to one of 8 devices, in a
child process per layout: ``contiguous`` (device i gets the i-th eighth of the PASID space) and
``interleaved`` (PASID p goes to device p mod 8). The reference is the count Linux's allocation
policy gives, computed here independently: per device, its directory (32 pages for 20-bit
PASIDs) plus one 4-KiB leaf per 64-PASID block it touches. The child also reports its RSS.

Usage: ``.venv/bin/python bench/bench_vtd.py [--cycles N] [--rounds R] [--pasids N]
[--layouts contiguous,interleaved] [--json]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from ioasidsd.model import IoasidCore, IoasidSetType, profile
from ioasidsd.model.hierarchy import Hierarchy
from ioasidsd.model.ioasids import IoasidsController
from ioasidsd.vtd import DriverOptions, PciDevice, VtdDriver

DEVICES = 8
PASID_BITS = 20


def bdf(i: int) -> str:
    return f"0000:{0x10 + i:02x}:00.0"


def build(devices: int, host_quota: int = 32768) -> tuple[IoasidCore, Hierarchy, VtdDriver]:
    core = IoasidCore(profile("fixed"))
    cgroups = IoasidsController(core).hierarchy
    driver = VtdDriver(core, options=DriverOptions(host_quota=host_quota))
    driver.add_unit("dmar0")
    for i in range(devices):
        driver.add_device(PciDevice(bdf(i), PASID_BITS, ats=True, pri=True), "dmar0")
    driver.boot()
    return core, cgroups, driver


def native_cycles(n: int) -> tuple[float, int]:
    _, cgroups, driver = build(1)
    proc = cgroups.track(100, 1.0)
    dev = bdf(0)
    before = driver.units["dmar0"].iq.processed
    start = time.perf_counter()
    for _ in range(n):
        driver.bind_mm(proc, dev)
        driver.unbind_mm(proc, dev)
    rate = n / (time.perf_counter() - start)
    return rate, (driver.units["dmar0"].iq.processed - before) // n


def guest_cycles(n: int) -> tuple[float, int]:
    core, cgroups, driver = build(1)
    vm = cgroups.track(200, 2.0)
    vm_set = core.set_alloc(vm.mm, 0, IoasidSetType.MM)
    hpasid = core.alloc(vm_set, 1, (1 << 20) - 1, task=vm)
    dev = bdf(0)
    before = driver.units["dmar0"].iq.processed
    start = time.perf_counter()
    for _ in range(n):
        driver.bind_gpasid(vm, hpasid, 101, dev)
        driver.unbind_gpasid(vm, hpasid, dev)
    rate = n / (time.perf_counter() - start)
    return rate, (driver.units["dmar0"].iq.processed - before) // n


def reference_cycles(n: int) -> float:
    """The core's share of a native cycle: alloc from a NULL set, put back."""
    core = IoasidCore(profile("fixed"))
    host = core.set_alloc(None, 32768, IoasidSetType.NULL)
    alloc, put = core.alloc, core.put
    start = time.perf_counter()
    for _ in range(n):
        pasid = alloc(host, 1, (1 << 20) - 1, None)
        put(host, pasid)
    return n / (time.perf_counter() - start)


def expected_pages(pasids: list[int], device_of: list[int]) -> int:
    """Linux's policy: per device a 32-page directory and a leaf per 64-PASID block used."""
    blocks: list[set[int]] = [set() for _ in range(DEVICES)]
    for pasid, dev in zip(pasids, device_of, strict=True):
        blocks[dev].add(pasid >> 6)
    dir_pages = (1 << PASID_BITS) >> 3 >> 12  # max_pasid >> 3 bytes, in 4-KiB pages
    return sum(dir_pages + len(b) for b in blocks)


def pages_child(layout: str, count: int) -> dict[str, Any]:
    """Run in a child: bind ``count`` PASIDs across 8 devices, report pages and RSS."""
    import psutil

    rss_empty = psutil.Process().memory_info().rss
    core, cgroups, driver = build(DEVICES, host_quota=0)
    vm = cgroups.track(300, 3.0)
    vm_set = core.set_alloc(vm.mm, 0, IoasidSetType.MM)
    pasids = [core.alloc(vm_set, 1, (1 << 20) - 1, task=vm) for _ in range(count)]
    if layout == "contiguous":
        per = -(-count // DEVICES)
        device_of = [i // per for i in range(count)]
    else:
        device_of = [p % DEVICES for p in pasids]
    start = time.perf_counter()
    for pasid, dev in zip(pasids, device_of, strict=True):
        driver.bind_gpasid(vm, pasid, None, bdf(dev), gpgd=0x1000)
    seconds = time.perf_counter() - start
    mem = driver.mem
    tables = [driver.info(bdf(i)).table for i in range(DEVICES)]
    present = sum(sum(t.present.values()) for t in tables)
    assert present == count
    return {
        "layout": layout,
        "bound": count,
        "pasid_table_pages": mem.live["pasid_dir"] + mem.live["pasid_table"],
        "dir_pages": mem.live["pasid_dir"],
        "leaf_pages": mem.live["pasid_table"],
        "expected_pages": expected_pages(pasids, device_of),
        "all_pages": mem.live_total,
        "binds_per_s": count / seconds,
        "rss_mb": (psutil.Process().memory_info().rss - rss_empty) / 1e6,
    }


def run_child(layout: str, count: int) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--pages-child", layout, str(count)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pasids", type=int, default=(1 << 20) - 1)
    parser.add_argument("--layouts", default="contiguous,interleaved")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--pages-child", nargs=2, metavar=("LAYOUT", "COUNT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pages_child:
        print(json.dumps(pages_child(args.pages_child[0], int(args.pages_child[1]))))
        return
    native, guest, ref = [], [], []
    per_native = per_guest = 0
    for _ in range(args.rounds):
        rate, per_native = native_cycles(args.cycles)
        native.append(rate)
        rate, per_guest = guest_cycles(args.cycles)
        guest.append(rate)
        ref.append(reference_cycles(args.cycles * 10))
    result: dict[str, Any] = {
        "native_cycles_per_s": max(native),
        "guest_cycles_per_s": max(guest),
        "reference_pairs_per_s": max(ref),
        "native_over_reference": max(native) / max(ref),
        "guest_over_reference": max(guest) / max(ref),
        "descriptors_per_native_cycle": per_native,
        "descriptors_per_guest_cycle": per_guest,
        "pages": [run_child(layout, args.pasids) for layout in args.layouts.split(",") if layout],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"native bind+teardown cycles/s  {result['native_cycles_per_s']:12,.0f}  "
          f"({per_native} descriptors each)")
    print(f"guest bind+teardown cycles/s   {result['guest_cycles_per_s']:12,.0f}  "
          f"({per_guest} descriptors each)")
    print(f"reference core alloc+put/s     {result['reference_pairs_per_s']:12,.0f}")
    print(f"native / reference             {result['native_over_reference']:12.4f}")
    print(f"guest / reference              {result['guest_over_reference']:12.4f}")
    for row in result["pages"]:
        ratio = row["pasid_table_pages"] / row["expected_pages"]
        print(f"{row['layout']:>12}: {row['bound']:,} PASIDs bound over {DEVICES} devices: "
              f"{row['pasid_table_pages']:,} PASID-table pages "
              f"({row['dir_pages']} directory + {row['leaf_pages']:,} leaf) = "
              f"{row['pasid_table_pages'] * 4096 / 2**20:,.1f} MiB; Linux's policy "
              f"{row['expected_pages']:,} (ratio {ratio:.3f}); "
              f"{row['binds_per_s']:,.0f} binds/s; RSS +{row['rss_mb']:,.0f} MB")


if __name__ == "__main__":
    main()
