"""The daemon's settings: defaults, a TOML file, command-line flags (which win), validated.

A configuration file holds the same settings as the flags, plus the semantics (profile and
knobs) and the VT-d units and devices::

    mount = "/sys/fs/cgroup/ioasids"
    state_dir = "/var/lib/ioasidsd"
    runtime_dir = "/run/ioasidsd"
    capacity = 1048576          # installed at the first start; default: the VT-d units' PASID
                                # space (2^20 with PSS=19); at most that space
    profile = "fixed"           # or "v4"
    hierarchy = "v1"            # the hierarchy served: cgroup v1, or v2 (unified)
    log_format = "auto"         # console on a terminal, JSON otherwise; or console, logfmt, json
    log_level = "info"          # debug, info, warning, error
    tracking = "auto"           # kernel (a named cgroup-v1 hierarchy keeps membership; root),
                                # connector (netlink, root), poll (psutil); auto: the first of
                                # them that works
    poll_interval = 1.0         # seconds between scans in poll and kernel mode
    unplaced = "refuse"         # a process whose cgroup cannot be established (its parent
                                # exited unseen, no tracked process shares its session):
                                # refuse its charge (EPERM), or charge it to the root
    synchronous = "normal"      # state durability: normal (survives kill -9), full (power loss)

    [service]                   # the sockets (control.sock, ioasid.sock)
    max_connections_per_uid = 64    # open connections each uid but root's may hold on each

    [events]                    # the refusal log (ioasidctl events)
    ring = 256                  # refusals kept per cgroup, the oldest pushed out first

    [limits]
    root_max = "max"            # IOASIDs the processes of the root cgroup itself may hold
                                # (their children's cgroups are not counted): an integer, or
                                # "max" (no limit, as in the kernel, whose root has none);
                                # applied again at a reload (SIGHUP)
    [units]                     # slices: where unit files are read (highest first), where
                                # set-property writes its drop-ins (persistent, then --runtime),
                                # and the limit of a slice that sets no IOASIDsMax=
    path = ["/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system"]
    control_path = ["/etc/systemd/system.control", "/run/systemd/system.control"]
    default_ioasids_max = "infinity"    # a number, "N%" of the capacity, or "infinity"
    follow = "none"             # membership from the host's hierarchy: "systemd" (name=systemd
                                # where mounted, else the unified one), "unified", or "none"

    [knobs]                     # any knob of ioasidsd.model.knobs, over the profile's values
    uncharge_target = "current"

    [vtd]                       # VT-d units and devices (ioasidsd/vtd/driver/config.py); default:
    [[vtd.unit]]                # one unit dmar0 (PSS=19) and two devices
    name = "dmar0"
    pss = 19

Every error is a ``ConfigError`` whose message names the file and the setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ioasidsd.model.core import IOASID_MAX_VALUE
from ioasidsd.model.knobs import PROFILES, Knobs, profile
from ioasidsd.slices import DEFAULT_SEARCH_PATH, InvalidIOASIDsMax, parse_default_ioasids_max

LOG_FORMATS = ("auto", "console", "logfmt", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
TRACKING_MODES = ("auto", "kernel", "connector", "poll")
UNPLACED = ("refuse", "root")
SYNCHRONOUS = ("normal", "full")
HIERARCHIES = ("v1", "v2")
FOLLOW_MODES = ("none", "systemd", "unified")
MAX_CAPACITY = IOASID_MAX_VALUE + 1


class ConfigError(Exception):
    """A setting is missing its file, malformed, unknown or out of range."""


@dataclass(frozen=True)
class Config:
    """Every setting of ``ioasidsd run``, with the defaults ``docs/daemon.md`` lists."""

    mount: Path = Path("/sys/fs/cgroup/ioasids")
    state_dir: Path = Path("/var/lib/ioasidsd")
    runtime_dir: Path = Path("/run/ioasidsd")
    capacity: int | None = None
    profile: str = "fixed"
    hierarchy: str = "v1"
    knobs: dict[str, Any] = field(default_factory=dict)
    log_format: str = "auto"
    log_level: str = "info"
    tracking: str = "auto"
    poll_interval: float = 1.0
    unplaced: str = "refuse"
    max_connections_per_uid: int = 64
    events_ring: int = 256
    root_max: int | None = None
    follow: str = "none"
    synchronous: str = "normal"
    units_path: tuple[Path, ...] = DEFAULT_SEARCH_PATH.path
    units_control_path: tuple[Path, ...] = DEFAULT_SEARCH_PATH.control_path
    default_ioasids_max: str = "infinity"
    vtd: dict[str, Any] = field(default_factory=dict)
    config_file: Path | None = None

    def semantics(self) -> Knobs:
        """The knobs: the profile's values with ``knobs`` over them."""
        return profile(self.profile, **self.knobs)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain data (paths as strings), for status output."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = [str(item) for item in value]
        return out


_SERVICE = ("max_connections_per_uid",)
"""Settings of the ``[service]`` table (also flags; not top-level keys of the file)."""
_EVENTS = {"ring": "events_ring"}
"""Settings of the ``[events]`` table, by key: the setting (and flag) each one is."""
_LIMITS = {"root_max": "root_max"}
"""Settings of the ``[limits]`` table, by key: the setting (and flag) each one is."""
_UNITS = {"path": "units_path", "control_path": "units_control_path",
          "default_ioasids_max": "default_ioasids_max", "follow": "follow"}
"""Settings of the ``[units]`` table, by key: the setting each one is."""
_TABLES = {"events": _EVENTS, "limits": _LIMITS, "units": _UNITS}
"""The tables whose keys are settings of their own (``[service]`` aside: its keys are the
settings' names)."""
_FIELDS = {f.name: f for f in dataclasses.fields(Config)
           if f.name != "config_file" and f.name not in _SERVICE
           and f.name not in _EVENTS.values() and f.name not in _LIMITS.values()
           and f.name not in _UNITS.values()}
_PATHS = ("mount", "state_dir", "runtime_dir")
_CHOICES = {"profile": PROFILES, "log_format": LOG_FORMATS, "log_level": LOG_LEVELS,
            "tracking": TRACKING_MODES, "synchronous": SYNCHRONOUS, "unplaced": UNPLACED,
            "hierarchy": HIERARCHIES, "follow": FOLLOW_MODES}

_INTEGERS = {  # setting: (its key in the file, lowest, highest, whether "max" is taken)
    "capacity": ("capacity", 1, MAX_CAPACITY, False),
    "max_connections_per_uid": ("max_connections_per_uid", 1, 65536, False),
    "events_ring": ("ring", 1, 65536, False),
    "root_max": ("root_max", 0, MAX_CAPACITY, True),
}
"""Integer settings (``None``, and ``"max"`` where taken, for no value or no limit)."""

def _check(name: str, value: Any, where: str) -> Any:
    """``value`` of setting ``name`` converted to its type, or ``ConfigError``."""
    if name in _PATHS:
        if not isinstance(value, str | Path) or not str(value):
            raise ConfigError(f"{where}: {name} must be a non-empty path")
        return Path(value)
    if name in _CHOICES:
        if value not in _CHOICES[name]:
            raise ConfigError(f"{where}: {name} = {value!r}: expected one of "
                              f"{', '.join(_CHOICES[name])}")
        return value
    if name in _INTEGERS:
        key, low, high, takes_max = _INTEGERS[name]
        if value is None or (takes_max and value == "max"):
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            what = '"max" or an integer' if takes_max else "an integer"
            raise ConfigError(f"{where}: {key} = {value!r}: expected {what} in [{low}, {high}]")
        return value
    if name == "poll_interval":
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value) or not 0.01 <= value <= 3600:
            raise ConfigError(f"{where}: poll_interval = {value!r}: expected seconds in "
                              f"[0.01, 3600]")
        return float(value)
    if name in ("units_path", "units_control_path"):
        key = "path" if name == "units_path" else "control_path"
        if isinstance(value, str | Path) or not isinstance(value, list | tuple) or any(
                not isinstance(item, str | Path) or not str(item) for item in value):
            raise ConfigError(f"{where}: {key} = {value!r}: expected a list of directories")
        paths = tuple(Path(item) for item in value)
        if name == "units_control_path" and len(paths) != 2:
            raise ConfigError(f"{where}: control_path = {value!r}: expected two directories, "
                              f"the persistent one and the runtime one (--runtime)")
        return paths
    if name == "default_ioasids_max":
        try:
            return str(parse_default_ioasids_max(value))
        except InvalidIOASIDsMax as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if name in ("knobs", "vtd"):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{name}] must be a table")
        value = dict(value)
        if name == "knobs":
            if "profile" in value:
                raise ConfigError(f"{where}: the profile is a top-level setting, not a knob")
            if value.get("new_cgroup_max") == 0 and not isinstance(value["new_cgroup_max"], bool):
                value["new_cgroup_max"] = "0"  # TOML's 0 for the knob's "0"
        return value
    raise ConfigError(f"{where}: unknown setting {name!r}")  # pragma: no cover


def _unknown(name: str, where: str) -> ConfigError:
    close = difflib.get_close_matches(name, _FIELDS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{where}: unknown setting {name!r}{hint}")


def read_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file, checked and converted (not merged)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "service":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [service] must be a table")
            for key, setting in value.items():
                if key not in _SERVICE:
                    close = difflib.get_close_matches(key, _SERVICE, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{path}: unknown setting [service] {key!r}{hint}")
                settings[key] = _check(key, setting, f"{path}: [service]")
            continue
        if name in _TABLES:
            table = _TABLES[name]
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}] must be a table")
            for key, setting in value.items():
                if key not in table:
                    close = difflib.get_close_matches(key, table, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ConfigError(f"{path}: unknown setting [{name}] {key!r}{hint}")
                settings[table[key]] = _check(table[key], setting, f"{path}: [{name}]")
            continue
        if name not in _FIELDS:
            raise _unknown(name, str(path))
        settings[name] = _check(name, value, str(path))
    return settings


def load_config(path: str | Path | None = None, flags: dict[str, Any] | None = None) -> Config:
    """The configuration: defaults, then the file at ``path`` (if any), then the ``flags`` that
    are not ``None``. Raises ``ConfigError`` for any bad setting, including knobs the profile
    does not know or values they do not take."""
    settings: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        settings.update(read_file(path))
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in _FIELDS and name not in _SERVICE and name not in _EVENTS.values() \
                and name not in _LIMITS.values() and name not in _UNITS.values():
            raise _unknown(name, "command line")
        settings[name] = _check(name, value, "command line")
    config = Config(**settings, config_file=path)
    try:
        config.semantics()
    except ValueError as exc:
        where = str(path) if path is not None and "knobs" in settings else "command line"
        raise ConfigError(f"{where}: {exc}") from None
    from ioasidsd.vtd.driver.config import parse_config

    try:
        vtd = parse_config(config.vtd)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    space, scalable = vtd.pasid_space()
    if config.capacity is not None and scalable and config.capacity > space:
        where = "command line" if (flags or {}).get("capacity") is not None else str(path)
        raise ConfigError(f"{where}: capacity = {config.capacity} exceeds the {space} PASIDs "
                          f"of the VT-d units (the smallest 2^(PSS+1) over [vtd] units)")
    return config


# Settings a reload (SIGHUP) applies at once; the others need a restart.
RELOADABLE = ("log_format", "log_level", "poll_interval", "unplaced",
              "max_connections_per_uid", "root_max", "units_path", "units_control_path",
              "default_ioasids_max")


def reload_changes(running: Config, new: Config) -> tuple[dict[str, Any], list[str]]:
    """What a reload to ``new`` changes: the reloadable settings that differ (name -> new
    value), and the names of the other settings that differ (they wait for a restart)."""
    applied: dict[str, Any] = {}
    pending: list[str] = []
    for name in (*_FIELDS, *_SERVICE, *_EVENTS.values(), *_LIMITS.values(), *_UNITS.values()):
        old_value, new_value = getattr(running, name), getattr(new, name)
        if old_value == new_value:
            continue
        if name in RELOADABLE:
            applied[name] = new_value
        else:
            pending.append(name)
    return applied, pending
