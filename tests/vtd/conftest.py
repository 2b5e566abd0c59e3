"""Fixtures for the VT-d tests: a core with a step-mode work queue, processes, and a factory
for booted drivers with chosen capabilities, devices and options."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ioasidsd.model import IoasidCore, IoasidsController, IoasidSetType, OrderedWorkQueue, profile
from ioasidsd.model.core import IoasidSet
from ioasidsd.model.hierarchy import Process
from ioasidsd.vtd import Capabilities, DriverOptions, PciDevice, UnitOptions, VtdDriver

DEV_A = "0000:03:00.0"  # 20-bit PASIDs, ATS, PRI
DEV_B = "0000:04:00.0"  # 20-bit PASIDs, ATS, no PRI


class Env:
    """A core, its controller, the controller's hierarchy (``cgroups``), a driver and helpers,
    for one test."""

    def __init__(self, knobs_profile: str = "fixed") -> None:
        self.core = IoasidCore(profile(knobs_profile), wq=OrderedWorkQueue(mode="manual"))
        self.controller = IoasidsController(self.core)
        self.cgroups = self.controller.hierarchy
        self.driver: VtdDriver | None = None
        self._pid = 1000

    def process(self) -> Process:
        self._pid += 1
        return self.cgroups.track(self._pid, float(self._pid))

    def vm(self, quota: int = 0) -> tuple[Process, IoasidSet]:
        """A VMM process and the MM set of its /dev/ioasid."""
        proc = self.process()
        return proc, self.core.set_alloc(proc.mm, quota, IoasidSetType.MM)

    def build(self, caps: Capabilities | None = None,
              devices: list[PciDevice] | None = None, *,
              options: DriverOptions | None = None, unit_options: UnitOptions | None = None,
              boot: bool = True, **unit_kw: Any) -> VtdDriver:
        driver = VtdDriver(self.core, options=options)
        driver.add_unit("dmar0", caps, options=unit_options, **unit_kw)
        if devices is None:
            devices = [PciDevice(DEV_A), PciDevice(DEV_B, pri=False)]
        for dev in devices:
            driver.add_device(dev, "dmar0")
        if boot:
            driver.boot()
        self.driver = driver
        return driver


@pytest.fixture
def env() -> Env:
    return Env("fixed")


@pytest.fixture
def env_v4() -> Env:
    return Env("v4")


@pytest.fixture
def drv(env: Env) -> VtdDriver:
    return env.build()


@pytest.fixture
def labels_after() -> Callable[[VtdDriver], Callable[[], list[str]]]:
    """``mark = labels_after(driver)``; later ``mark()`` lists the descriptor labels the
    hardware processed since."""

    def start(driver: VtdDriver) -> Callable[[], list[str]]:
        seq = driver.trace.seq

        def since() -> list[str]:
            return [e["label"] for e in driver.trace.since(seq, ["inv_desc"])]

        return since

    return start


@pytest.fixture
def events() -> Iterator[Callable[[VtdDriver, str], list[Any]]]:
    yield lambda driver, kind: [e for e in driver.trace.events if e.kind == kind]
