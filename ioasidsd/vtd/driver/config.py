"""Building the simulated VT-d system from the daemon's configuration (a plain mapping).

The ``[vtd]`` table of the daemon's TOML file, as a dict::

    [vtd]
    host_quota = 32768            # driver options (``iommu.DriverOptions``)
    teardown = "current"

    [[vtd.unit]]
    name = "dmar0"
    pss = 19                      # any capability knob of ``caps.Capabilities``
    nest = true
    version = 0x10                # VER register
    vcmd_layout = "3.3"           # "3.1" or "3.3" (used when vcs = true)
    vccap_pas = true
    strict_sm_128bit = true       # any ``unit.UnitOptions`` field

    [[vtd.device]]
    bdf = "0000:03:00.0"
    unit = "dmar0"                # may be left out when there is one unit
    pasid_bits = 20
    ats = true
    pri = true
    qdep = 32
    pf_bdf = "0000:03:00.0"       # for a VF (optional)

Without a ``vtd`` table, or with an empty one, the default is one unit ``dmar0`` with the
default capabilities (PSS = 19: 2^20 PASIDs) and two devices: ``0000:03:00.0`` (20-bit PASIDs,
ATS, PRI) and ``0000:04:00.0`` (20-bit PASIDs, ATS, no PRI). Errors raise ``ValueError`` naming
the offending table and key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ioasidsd.model.core import IoasidCore
from ioasidsd.model.errors import IoasidError
from ioasidsd.vtd.driver.iommu import DriverOptions
from ioasidsd.vtd.driver.vtd_driver import VtdDriver
from ioasidsd.vtd.hardware.caps import CAP_FIELDS, ECAP_FIELDS, Capabilities, system_pasid_space
from ioasidsd.vtd.hardware.device import PciDevice
from ioasidsd.vtd.hardware.registers import VCMD_LAYOUTS
from ioasidsd.vtd.hardware.unit import UnitOptions

_UNIT_KEYS = {"name", "version", "vcmd_layout", "vccap_pas"}
_UNIT_OPTION_KEYS = {f.name for f in dataclasses.fields(UnitOptions)}
_CAP_KEYS = set(CAP_FIELDS) | set(ECAP_FIELDS)
_DEVICE_KEYS = {"bdf", "unit", "pasid_bits", "ats", "pri", "qdep", "pf_bdf"}
_DRIVER_KEYS = {f.name for f in dataclasses.fields(DriverOptions)}


@dataclass(frozen=True)
class UnitConfig:
    name: str
    caps: Capabilities = field(default_factory=Capabilities)
    version: int = 0x10
    vcmd_layout: str = "3.3"
    vccap_pas: bool = True
    options: UnitOptions = field(default_factory=UnitOptions)


@dataclass(frozen=True)
class DeviceConfig:
    bdf: str
    unit: str
    pasid_bits: int = 20
    ats: bool = True
    pri: bool = True
    qdep: int = 32
    pf_bdf: str | None = None


@dataclass(frozen=True)
class VtdConfig:
    units: tuple[UnitConfig, ...]
    devices: tuple[DeviceConfig, ...]
    driver: DriverOptions = field(default_factory=DriverOptions)

    def pasid_space(self) -> tuple[int, bool]:
        """The units' PASID space and whether scalable mode will be on
        (``caps.system_pasid_space``): the capacity a boot installs, known before booting."""
        return system_pasid_space(u.caps for u in self.units)


def default_config() -> VtdConfig:
    """One unit with 2^20 PASIDs and two devices (one with PRI, one without)."""
    return VtdConfig(
        units=(UnitConfig("dmar0"),),
        devices=(DeviceConfig("0000:03:00.0", "dmar0"),
                 DeviceConfig("0000:04:00.0", "dmar0", pri=False)),
    )


def _check_keys(where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _typed(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: {key} must be an integer, got {value!r}")
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string, got {value!r}")
    return value


def _unit(index: int, table: Mapping[str, Any]) -> UnitConfig:
    where = f"vtd.unit[{index}]"
    table = {k.lower(): v for k, v in table.items()} if isinstance(table, Mapping) else table
    _check_keys(where, table, _UNIT_KEYS | _UNIT_OPTION_KEYS | _CAP_KEYS)
    name = _typed(where, "name", table.get("name", f"dmar{index}"), str)
    caps: dict[str, Any] = {}
    for key in _CAP_KEYS & set(table):
        value = table[key]
        width = (CAP_FIELDS.get(key) or ECAP_FIELDS[key]).width
        caps[key] = _typed(where, key, value, bool if width == 1 else int)
    options = {k: _typed(where, k, table[k], bool) for k in _UNIT_OPTION_KEYS & set(table)}
    version = _typed(where, "version", table.get("version", 0x10), int)
    if not 0 <= version <= 0xFF:
        raise ValueError(f"{where}: version {version:#x} is not a byte")
    layout = str(table.get("vcmd_layout", "3.3"))
    if layout not in VCMD_LAYOUTS:
        raise ValueError(f"{where}: vcmd_layout {layout!r}: expected one of "
                         f"{', '.join(VCMD_LAYOUTS)}")
    try:
        capabilities = Capabilities(**caps)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return UnitConfig(name, capabilities, version, layout,
                      _typed(where, "vccap_pas", table.get("vccap_pas", True), bool),
                      UnitOptions(**options))


def _device(index: int, table: Mapping[str, Any], units: tuple[UnitConfig, ...]) -> DeviceConfig:
    where = f"vtd.device[{index}]"
    _check_keys(where, table, _DEVICE_KEYS)
    if "bdf" not in table:
        raise ValueError(f"{where}: bdf is required")
    names = [u.name for u in units]
    unit = table.get("unit")
    if unit is None:
        if len(names) != 1:
            raise ValueError(f"{where}: unit is required when there are {len(names)} units")
        unit = names[0]
    if unit not in names:
        raise ValueError(f"{where}: no unit named {unit!r}")
    values = {
        "bdf": _typed(where, "bdf", table["bdf"], str),
        "unit": unit,
        "pasid_bits": _typed(where, "pasid_bits", table.get("pasid_bits", 20), int),
        "ats": _typed(where, "ats", table.get("ats", True), bool),
        "pri": _typed(where, "pri", table.get("pri", True), bool),
        "qdep": _typed(where, "qdep", table.get("qdep", 32), int),
        "pf_bdf": table.get("pf_bdf"),
    }
    try:
        PciDevice(values["bdf"], values["pasid_bits"], values["ats"], values["pri"],
                  values["qdep"], values["pf_bdf"])
    except IoasidError as exc:
        raise ValueError(f"{where}: {exc.strerror}") from None
    return DeviceConfig(**values)


def parse_config(table: Mapping[str, Any] | None) -> VtdConfig:
    """The VT-d configuration of a ``[vtd]`` table (``None`` or empty: the default)."""
    if not table:
        return default_config()
    _check_keys("vtd", table, {"unit", "device"} | _DRIVER_KEYS)
    driver_values = {k: table[k] for k in _DRIVER_KEYS & set(table)}
    try:
        driver = DriverOptions(**driver_values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"vtd: {exc}") from None
    unit_tables = table.get("unit")
    if unit_tables is None:
        units = default_config().units
        device_tables = table.get("device")
        devices = default_config().devices if device_tables is None else ()
    else:
        if not isinstance(unit_tables, list) or not unit_tables:
            raise ValueError("vtd.unit: expected a non-empty array of tables")
        units = tuple(_unit(i, t) for i, t in enumerate(unit_tables))
        device_tables = table.get("device")
        devices = ()
    names = [u.name for u in units]
    if len(set(names)) != len(names):
        raise ValueError(f"vtd.unit: duplicate unit names in {names}")
    if device_tables is not None:
        if not isinstance(device_tables, list):
            raise ValueError("vtd.device: expected an array of tables")
        devices = tuple(_device(i, t, units) for i, t in enumerate(device_tables))
    bdfs = [PciDevice(dv.bdf).bdf for dv in devices]
    if len(set(bdfs)) != len(bdfs):
        raise ValueError(f"vtd.device: duplicate BDFs in {bdfs}")
    return VtdConfig(units, devices, driver)


def build_driver(core: IoasidCore, config: VtdConfig | Mapping[str, Any] | None = None, *,
                 boot: bool = True, capacity: int | None = None,
                 adopt: bool = False) -> VtdDriver:
    """A ``VtdDriver`` over ``core`` with the configured units and devices, booted unless
    ``boot`` is false (``capacity`` and ``adopt`` are ``VtdDriver.boot``'s). ``config`` may be
    a ``VtdConfig`` or a ``[vtd]`` table (``ValueError`` if it is malformed)."""
    if not isinstance(config, VtdConfig):
        config = parse_config(config)
    driver = VtdDriver(core, options=config.driver)
    for unit in config.units:
        driver.add_unit(unit.name, unit.caps, version=unit.version,
                        vcmd_layout=unit.vcmd_layout, vccap_pas=unit.vccap_pas,
                        options=unit.options)
    for dev in config.devices:
        driver.add_device(PciDevice(dev.bdf, dev.pasid_bits, dev.ats, dev.pri, dev.qdep,
                                    dev.pf_bdf), dev.unit)
    if boot:
        driver.boot(capacity=capacity, adopt=adopt)
    return driver
