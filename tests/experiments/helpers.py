"""Policy files for the experiment tests, written from Python mappings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

TIMINGS = ("events_per_s", "wall_s")
IOASIDCTL = Path(sys.executable).parent / "ioasidctl"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_policy(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (top-level keys, ``system``/``run`` tables, ``cgroup``/``workload``
    arrays of tables) as a TOML policy at ``path``."""
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict | list):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif isinstance(value, list):
            for entry in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def one_pool(limit: int | str = 10, rate: float = 8.0, mean: float = 1.0, **run: Any,
             ) -> dict[str, Any]:
    """One workload of one-IOASID tenants in ``/a`` with ``ioasids.max`` = ``limit``."""
    return {
        "name": "one pool",
        "cgroup": [{"path": "/a", "max": limit}],
        "workload": [{"name": "w", "cgroup": "/a",
                      "arrival": {"process": "poisson", "rate": rate},
                      "lifetime": {"dist": "exponential", "mean": mean}}],
        "run": {"duration": 500.0, "warmup": 20.0, "seed": 1, **run},
    }


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in TIMINGS}
