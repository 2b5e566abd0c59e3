"""Policy files: what an experiment runs, read from TOML and checked before anything runs.

``load_policy(path)`` reads a policy file and returns a ``Policy``; ``parse_policy(data, ...)``
checks an already-parsed mapping (``--set`` changes the mapping, then checks it again). A
policy with any error (an unknown key, a wrong type, a missing required key, a cgroup whose
parent is missing, a negative rate, an empty empirical distribution, a count from a
distribution that is not integer-valued, a limit the profile refuses) raises ``PolicyError``
naming the file, the key and the reason, and nothing runs.

The keys, their defaults and their meaning are the experiments contract, repeated in
``docs/experiments.md``: ``schema``, ``name``, ``description``; ``[system]`` with
``capacity``, ``profile`` and ``knobs``; ``[[cgroup]]`` with ``path`` and ``max``;
``[[workload]]`` with ``name``, ``cgroup``, ``arrival``, ``lifetime``, ``ioasids``,
``on_refusal``, ``migrate`` and ``bind``; ``[run]`` with ``duration``, ``warmup``, ``seed`` and
``replications``. Limits are checked by building the hierarchy on the real model with the
policy's profile and knobs, as a run does.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ioasidsd.experiments.distributions import (
    Arrival,
    Distribution,
    parse_arrival,
    parse_distribution,
)
from ioasidsd.experiments.errors import PolicyError
from ioasidsd.experiments.trace import TraceOp, read_trace
from ioasidsd.model.core import PCI_PASID_MAX
from ioasidsd.model.errors import IoasidError
from ioasidsd.model.knobs import Knobs, profile

SCHEMA = 1
MAX_COUNT = 65536
"""The most IOASIDs one tenant may ask for at once (the user API's largest batch)."""


@dataclass(frozen=True, slots=True)
class CgroupSpec:
    """One ``[[cgroup]]``: its ``path`` and ``max`` (an integer, ``None`` for ``"max"``, or
    ``"default"`` when absent: the profile's value for a new cgroup)."""

    path: str
    max: int | str | None = "default"


@dataclass(frozen=True, slots=True)
class Workload:
    """One ``[[workload]]``: a class of tenants, each a simulated process.

    ``retry_after``/``retry_max``: ``on_refusal = { retry = ... }`` (``None``/0 for
    ``leave``). ``migrate_after``/``migrate_to``: ``migrate`` (``None`` when absent).
    ``bind_device``/``bind_share``: ``bind`` (``None``/0.0 when absent). ``trace``: the
    operations of a ``trace`` arrival (``lifetime`` is then optional and unused: the trace
    says when its processes exit)."""

    name: str
    cgroup: str
    arrival: Arrival
    lifetime: Distribution | None
    ioasids: Distribution
    retry_after: Distribution | None = None
    retry_max: int = 0
    migrate_after: Distribution | None = None
    migrate_to: str | None = None
    bind_device: str | None = None
    bind_share: float = 0.0
    trace: tuple[TraceOp, ...] = ()


@dataclass(frozen=True, slots=True)
class Policy:
    """A checked policy. ``data`` is the mapping it was read from (``with_settings`` changes a
    copy of it); ``file`` its path (errors name it; traces are found beside it)."""

    name: str
    description: str
    capacity: int
    profile: str
    knob_overrides: Mapping[str, Any]
    knobs: Knobs
    cgroups: tuple[CgroupSpec, ...]
    workloads: tuple[Workload, ...]
    duration: float
    warmup: float
    seed: int
    replications: int
    file: str = ""
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def with_settings(self, settings: Mapping[str, Any]) -> Policy:
        """This policy with values changed by path (``--set``): ``workload[gold].arrival.rate``,
        ``cgroup[/vms/gold].max``, ``system.knobs.migration``, ``run.seed``. The result is
        checked again; ``PolicyError`` for a path that names nothing or a value that is
        wrong."""
        data = copy.deepcopy(dict(self.data))
        for key, value in settings.items():
            set_path(data, key, value)
        return parse_policy(data, self.file)


_SELECTOR = re.compile(r"^(workload|cgroup)\[([^\]]+)\]$")


def set_path(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the value at ``key`` in ``data`` (a policy's mapping): dotted names, with
    ``workload[NAME]`` and ``cgroup[PATH]`` selecting an entry of those arrays. Missing tables
    on the way are created. ``PolicyError`` when a selector names no entry."""
    parts = _split_key(key)
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        match = _SELECTOR.match(part)
        if match:
            array, wanted = match.groups()
            entries = node.get(array, []) if isinstance(node, dict) else []
            attr = "name" if array == "workload" else "path"
            found = [e for e in entries if isinstance(e, dict) and e.get(attr) == wanted]
            if not found:
                raise PolicyError(key, f"no {array} with {attr} {wanted!r}")
            if last:
                raise PolicyError(key, f"names a whole {array}: name one of its keys")
            node = found[0]
            continue
        if not isinstance(node, dict):
            raise PolicyError(key, f"{'.'.join(parts[:i])} is not a table")
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})


def _split_key(key: str) -> list[str]:
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in key:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "." and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if any(not p for p in parts):
        raise PolicyError(key, "expected a dotted path such as workload[gold].arrival.rate")
    return parts


def load_policy(path: str) -> Policy:
    """Read and check the policy file at ``path``. ``PolicyError`` (naming the file) for an
    unreadable file, invalid TOML or any error of the policy."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise PolicyError("(file)", exc.strerror or str(exc), path) from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError("(toml)", str(exc), path) from None
    return parse_policy(data, path)


def parse_policy(data: Mapping[str, Any], file: str = "") -> Policy:
    """Check the parsed policy ``data`` (read from ``file``, which errors name and relative
    trace paths start from). ``PolicyError`` for the first error."""
    try:
        return _parse(data, file)
    except PolicyError as exc:
        exc.file = exc.file or file or "(policy)"
        raise


# ---------------------------------------------------------------------- checking
def _table(data: Mapping[str, Any], key: str, where: str, *, required: bool = False,
           ) -> Mapping[str, Any]:
    value = data.get(key)
    name = f"{where}.{key}" if where else key
    if value is None:
        if required:
            raise PolicyError(name, "missing required table")
        return {}
    if not isinstance(value, Mapping):
        raise PolicyError(name, f"expected a table, got {value!r}")
    return value


def _only(data: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in keys:
            raise PolicyError(f"{where}.{key}" if where else key, "unknown key")


def _str(data: Mapping[str, Any], key: str, where: str, *, required: bool = False,
         default: str = "") -> str:
    name = f"{where}.{key}" if where else key
    if key not in data:
        if required:
            raise PolicyError(name, "missing required key")
        return default
    value = data[key]
    if not isinstance(value, str):
        raise PolicyError(name, f"expected a string, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str, default: int, *, low: int) -> int:
    name = f"{where}.{key}"
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(name, f"expected an integer, got {value!r}")
    if value < low:
        raise PolicyError(name, f"must be at least {low}, got {value}")
    return value


def _real(data: Mapping[str, Any], key: str, where: str, default: float | None) -> float:
    name = f"{where}.{key}"
    if key not in data and default is None:
        raise PolicyError(name, "missing required key")
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise PolicyError(name, f"expected a number, got {value!r}")
    if value < 0:
        raise PolicyError(name, f"must not be negative, got {value!r}")
    return float(value)


def _cgroup_path(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise PolicyError(name, f"expected an absolute cgroup path such as \"/vms/gold\", "
                                f"got {value!r}")
    parts = value.strip("/").split("/") if value.strip("/") else []
    if any(p in ("", ".", "..") for p in parts):
        raise PolicyError(name, f"bad cgroup path {value!r}")
    return "/" + "/".join(parts)


def _parse(data: Mapping[str, Any], file: str) -> Policy:
    _only(data, ("schema", "name", "description", "system", "cgroup", "workload", "run"), "")
    schema = data.get("schema", SCHEMA)
    if schema != SCHEMA or isinstance(schema, bool):
        raise PolicyError("schema", f"unsupported schema {schema!r}: this version reads {SCHEMA}")
    name = _str(data, "name", "", required=True)
    description = _str(data, "description", "")

    system = _table(data, "system", "")
    _only(system, ("capacity", "profile", "knobs"), "system")
    capacity = _int(system, "capacity", "system", PCI_PASID_MAX, low=1)
    if capacity > PCI_PASID_MAX:
        raise PolicyError("system.capacity", f"must be at most {PCI_PASID_MAX} (20-bit PASIDs), "
                                             f"got {capacity}")
    profile_name = _str(system, "profile", "system", default="fixed")
    if profile_name not in ("fixed", "v4"):
        raise PolicyError("system.profile", f"unknown profile {profile_name!r}: expected fixed "
                                            f"or v4")
    overrides = dict(_table(system, "knobs", "system"))
    for knob in overrides:
        try:
            profile(profile_name, **{knob: overrides[knob]})
        except (ValueError, TypeError) as exc:
            raise PolicyError(f"system.knobs.{knob}", str(exc)) from None
    knobs = profile(profile_name, **overrides)

    cgroups = _parse_cgroups(data.get("cgroup", []))
    base = os.path.dirname(os.path.abspath(file)) if file else os.getcwd()
    workloads = _parse_workloads(data.get("workload"), base)

    run = _table(data, "run", "", required=True)
    _only(run, ("duration", "warmup", "seed", "replications"), "run")
    duration = _real(run, "duration", "run", None)
    if duration <= 0:
        raise PolicyError("run.duration", f"must be positive, got {duration!r}")
    warmup = _real(run, "warmup", "run", 0.0)
    if warmup >= duration:
        raise PolicyError("run.warmup", f"must be below the duration ({duration!r}), "
                                        f"got {warmup!r}")
    seed = _int(run, "seed", "run", 0, low=0)
    replications = _int(run, "replications", "run", 1, low=1)

    policy = Policy(name=name, description=description, capacity=capacity,
                    profile=profile_name, knob_overrides=overrides, knobs=knobs,
                    cgroups=cgroups, workloads=workloads, duration=duration, warmup=warmup,
                    seed=seed, replications=replications, file=file, data=data)
    check_limits(policy)
    return policy


def _parse_cgroups(entries: Any) -> tuple[CgroupSpec, ...]:
    if not isinstance(entries, list):
        raise PolicyError("cgroup", "expected an array of tables ([[cgroup]])")
    specs: list[CgroupSpec] = []
    known = {"/"}
    for i, entry in enumerate(entries):
        where = f"cgroup[{i}]"
        if not isinstance(entry, Mapping):
            raise PolicyError(where, "expected a table")
        if "path" not in entry:
            raise PolicyError(f"{where}.path", "missing required key")
        path = _cgroup_path(entry["path"], f"{where}.path")
        where = f"cgroup[{path}]"
        _only(entry, ("path", "max"), where)
        if path == "/":
            raise PolicyError(f"{where}.path", "the root cgroup has no limit to set")
        if path in known:
            raise PolicyError(f"{where}.path", "given twice")
        parent = path.rpartition("/")[0] or "/"
        if parent not in known:
            raise PolicyError(f"{where}.path", f"its parent {parent} is not declared before it")
        limit: int | str | None = "default"
        if "max" in entry:
            value = entry["max"]
            if value == "max":
                limit = None
            elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                limit = value
            else:
                raise PolicyError(f"{where}.max", f"expected a non-negative integer or \"max\", "
                                                  f"got {value!r}")
        known.add(path)
        specs.append(CgroupSpec(path, limit))
    return tuple(specs)


def _parse_workloads(entries: Any, base: str) -> tuple[Workload, ...]:
    if entries is None:
        raise PolicyError("workload", "missing: at least one [[workload]] is required")
    if not isinstance(entries, list) or not entries:
        raise PolicyError("workload", "expected a non-empty array of tables ([[workload]])")
    workloads: list[Workload] = []
    names: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"workload[{i}]"
        if not isinstance(entry, Mapping):
            raise PolicyError(where, "expected a table")
        name = _str(entry, "name", where, required=True)
        if not name:
            raise PolicyError(f"{where}.name", "must not be empty")
        where = f"workload[{name}]"
        if name in names:
            raise PolicyError(f"{where}.name", "given twice: workload names are unique")
        names.add(name)
        _only(entry, ("name", "cgroup", "arrival", "lifetime", "ioasids", "on_refusal",
                      "migrate", "bind"), where)
        if "cgroup" not in entry:
            raise PolicyError(f"{where}.cgroup", "missing required key")
        cgroup = _cgroup_path(entry["cgroup"], f"{where}.cgroup")
        if "arrival" not in entry:
            raise PolicyError(f"{where}.arrival", "missing required key")
        arrival = parse_arrival(entry["arrival"], f"{where}.arrival", base)
        lifetime = None
        if "lifetime" in entry:
            lifetime = parse_distribution(entry["lifetime"], f"{where}.lifetime")
        elif arrival.process != "trace":
            raise PolicyError(f"{where}.lifetime", "missing required key")
        ioasids = parse_distribution(entry.get("ioasids", {"dist": "fixed", "value": 1}),
                                     f"{where}.ioasids", count=True)
        _check_count(ioasids, f"{where}.ioasids")
        retry_after, retry_max = _parse_refusal(entry.get("on_refusal", "leave"), where)
        migrate_after = migrate_to = None
        if "migrate" in entry:
            migrate = entry["migrate"]
            mwhere = f"{where}.migrate"
            if not isinstance(migrate, Mapping):
                raise PolicyError(mwhere, "expected a table { after = DIST, to = \"/path\" }")
            _only(migrate, ("after", "to"), mwhere)
            if "after" not in migrate:
                raise PolicyError(f"{mwhere}.after", "missing required key")
            if "to" not in migrate:
                raise PolicyError(f"{mwhere}.to", "missing required key")
            migrate_after = parse_distribution(migrate["after"], f"{mwhere}.after")
            migrate_to = _cgroup_path(migrate["to"], f"{mwhere}.to")
        bind_device, bind_share = _parse_bind(entry.get("bind"), where)
        trace = read_trace(arrival.file) if arrival.process == "trace" else ()
        workloads.append(Workload(name, cgroup, arrival, lifetime, ioasids, retry_after,
                                  retry_max, migrate_after, migrate_to, bind_device, bind_share,
                                  trace))
    return tuple(workloads)


def _check_count(dist: Distribution, where: str) -> None:
    low = dist.params[0] if dist.params else min(dist.values)
    high = dist.params[-1] if dist.params else max(dist.values)
    if low < 1 and dist.kind == "fixed":
        raise PolicyError(where, f"a tenant asks for at least 1 IOASID, got {low:g}")
    if high > MAX_COUNT:
        raise PolicyError(where, f"a tenant asks for at most {MAX_COUNT} IOASIDs, got {high:g}")


def _parse_refusal(value: Any, where: str) -> tuple[Distribution | None, int]:
    name = f"{where}.on_refusal"
    if value == "leave":
        return None, 0
    if not isinstance(value, Mapping) or set(value) != {"retry"}:
        raise PolicyError(name, f"expected \"leave\" or {{ retry = {{ after = DIST, max = N }} "
                                f"}}, got {value!r}")
    retry = value["retry"]
    if not isinstance(retry, Mapping):
        raise PolicyError(f"{name}.retry", "expected a table { after = DIST, max = N }")
    _only(retry, ("after", "max"), f"{name}.retry")
    if "after" not in retry:
        raise PolicyError(f"{name}.retry.after", "missing required key")
    if "max" not in retry:
        raise PolicyError(f"{name}.retry.max", "missing required key")
    after = parse_distribution(retry["after"], f"{name}.retry.after")
    return after, _int(retry, "max", f"{name}.retry", 0, low=1)


def _parse_bind(value: Any, where: str) -> tuple[str | None, float]:
    if value is None:
        return None, 0.0
    name = f"{where}.bind"
    if not isinstance(value, Mapping):
        raise PolicyError(name, "expected a table { device = \"0000:03:00.0\", share = 1.0 }")
    _only(value, ("device", "share"), name)
    device = _str(value, "device", name, required=True)
    if not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-1][0-9a-fA-F]\.[0-7]", device):
        raise PolicyError(f"{name}.device", f"expected a PCI address such as 0000:03:00.0, "
                                            f"got {device!r}")
    share = _real(value, "share", name, 1.0)
    if share > 1:
        raise PolicyError(f"{name}.share", f"must be between 0 and 1, got {share!r}")
    return device.lower(), share


def check_limits(policy: Policy) -> None:
    """Build the policy's hierarchy on a real model with its profile, knobs and capacity, as a
    run does; ``PolicyError`` naming the ``[[cgroup]]`` whose limit the model refuses."""
    from ioasidsd.experiments.engine import build_system

    build_system(policy)


def limit_error(path: str, exc: IoasidError) -> PolicyError:
    """The ``PolicyError`` for a limit the model refused with ``exc``."""
    return PolicyError(f"cgroup[{path}].max", f"refused by the model: {exc.strerror} "
                                              f"({exc.name})")
