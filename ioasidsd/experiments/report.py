"""What experiments show and write: terminal tables, and ``--out DIR`` files.

Tables (``format_run``, ``format_compare``, ``format_sweep``) are plain text for a terminal.
``write_run``, ``write_compare`` and ``write_sweep`` fill a directory (made if missing):

* every verb: ``results.json`` (the same object ``--json`` prints);
* ``run``: ``workloads.csv`` (a row per workload: ``workload, offered, admitted, refused,
  blocking, ci_low, ci_high``), ``refused_by.csv`` (``workload, level, refused``),
  ``cgroups.csv`` (``cgroup, mean_current, peak, refusals``), ``current.csv`` (``time`` and a
  column per cgroup: ``ioasids.current`` sampled over the first replication),
  ``blocking.png`` (blocking per workload with its 95% interval) and ``current.png`` (each
  cgroup's ``current`` over simulated time);
* ``compare``: ``workloads.csv`` and ``cgroups.csv`` with a first column ``policy``, and
  ``blocking.png`` (blocking per workload, a bar per policy, with intervals);
* ``sweep``: ``grid.csv`` (a row per grid point and workload: the swept keys, ``workload``,
  ``offered``, ``blocking``, ``ci_low``, ``ci_high``, ``utilisation``, ``fairness_jain``),
  and ``blocking.png``, ``utilisation.png``, ``fairness.png``: each metric against the first
  swept key, a line per workload (and per value of the other swept keys).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ioasidsd.experiments.engine import Replication


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header)] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in cells]
    return "\n".join(lines)


def _ci(w: Mapping[str, Any]) -> str:
    ci = w["blocking_ci95"]
    return "-" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]"


def format_run(result: Mapping[str, Any]) -> str:
    """A run's result as tables: workloads, cgroups, the system."""
    head = (f"{result['policy']}  (profile {result['profile']}, seed {result['seed']}, "
            f"{result['replications']} replication(s) of {result['duration']:g}, warm-up "
            f"{result['warmup']:g})")
    wrows = [[name, w["offered"], w["admitted"], w["refused"], w["blocking"], _ci(w),
              ", ".join(f"{k} {v}" for k, v in w["refused_by"].items()) or "-"]
             for name, w in result["workloads"].items()]
    crows = [[path, c["mean_current"], c["peak"], c["refusals"]]
             for path, c in result["cgroups"].items()]
    s = result["system"]
    return "\n\n".join([
        head,
        _table(["workload", "offered", "admitted", "refused", "blocking", "95% interval",
                "refused by"], wrows),
        _table(["cgroup", "mean current", "peak", "refusals"], crows),
        _table(["capacity", "mean in use", "peak in use", "utilisation", "fairness (Jain)",
                "events", "events/s"],
               [[s["capacity"], s["mean_in_use"], s["peak_in_use"], s["utilisation"],
                 s["fairness_jain"], result["events"], round(result["events_per_s"])]]),
    ])


def format_compare(results: Sequence[Mapping[str, Any]]) -> str:
    """Several runs side by side: a column per policy."""
    header = ["", *[r["policy"] for r in results]]
    rows: list[list[Any]] = [["profile", *[r["profile"] for r in results]]]
    names = list(dict.fromkeys(n for r in results for n in r["workloads"]))
    for name in names:
        rows.append([f"{name}: blocking",
                     *[r["workloads"].get(name, {}).get("blocking") for r in results]])
        rows.append([f"{name}: 95% interval",
                     *[_ci(r["workloads"][name]) if name in r["workloads"] else None
                       for r in results]])
    paths = list(dict.fromkeys(p for r in results for p in r["cgroups"]))
    for path in paths:
        rows.append([f"{path}: mean current",
                     *[r["cgroups"].get(path, {}).get("mean_current") for r in results]])
    for key in ("utilisation", "fairness_jain", "peak_in_use"):
        rows.append([key, *[r["system"][key] for r in results]])
    return _table(header, rows)


def format_sweep(grid: Sequence[Mapping[str, Any]]) -> str:
    """A sweep: a row per grid point, blocking per workload and the system's figures."""
    keys = list(grid[0]["set"]) if grid else []
    names = list(grid[0]["results"]["workloads"]) if grid else []
    header = [*keys, *[f"{n} blocking" for n in names], "utilisation", "fairness"]
    rows = [[*[point["set"][k] for k in keys],
             *[point["results"]["workloads"][n]["blocking"] for n in names],
             point["results"]["system"]["utilisation"],
             point["results"]["system"]["fairness_jain"]] for point in grid]
    return _table(header, rows)


# ---------------------------------------------------------------------- files
def _write_json(out: str, obj: Any) -> None:
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _write_csv(out: str, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with open(os.path.join(out, name), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _workload_rows(result: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for name, w in result["workloads"].items():
        ci = w["blocking_ci95"] or [None, None]
        rows.append([name, w["offered"], w["admitted"], w["refused"], w["blocking"], *ci])
    return rows


def _blocking_plot(path: str, results: Sequence[Mapping[str, Any]], title: str) -> None:
    plt = _pyplot()
    names = list(dict.fromkeys(n for r in results for n in r["workloads"]))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) * len(results) + 2), 3.6))
    width = 0.8 / len(results)
    for k, result in enumerate(results):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(names):
            w = result["workloads"].get(name)
            if w is None:
                continue
            xs.append(i + (k - (len(results) - 1) / 2) * width)
            ys.append(w["blocking"])
            ci = w["blocking_ci95"]
            lo.append(w["blocking"] - ci[0] if ci else 0.0)
            hi.append(ci[1] - w["blocking"] if ci else 0.0)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3,
               label=result["policy"] if len(results) > 1 else None)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("blocking (refused / offered)")
    ax.set_title(title, fontsize=9)
    if len(results) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_run(out: str, result: Mapping[str, Any], first: Replication) -> None:
    """Fill ``out`` with a run's files (see the module's documentation)."""
    os.makedirs(out, exist_ok=True)
    _write_json(out, result)
    _write_csv(out, "workloads.csv", ["workload", "offered", "admitted", "refused", "blocking",
                                      "ci_low", "ci_high"], _workload_rows(result))
    _write_csv(out, "refused_by.csv", ["workload", "level", "refused"],
               [[n, level, k] for n, w in result["workloads"].items()
                for level, k in w["refused_by"].items()])
    _write_csv(out, "cgroups.csv", ["cgroup", "mean_current", "peak", "refusals"],
               [[p, c["mean_current"], c["peak"], c["refusals"]]
                for p, c in result["cgroups"].items()])
    _blocking_plot(os.path.join(out, "blocking.png"), [result], result["policy"])
    series = first.series
    if series:
        paths = [p for p in series if p != "time"]
        _write_csv(out, "current.csv", ["time", *paths],
                   [[t, *[series[p][i] for p in paths]] for i, t in enumerate(series["time"])])
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for p in paths:
            ax.step(series["time"], series[p], where="post", label=p, linewidth=0.9)
        ax.set_xlabel("simulated time")
        ax.set_ylabel("ioasids.current")
        ax.set_title(f"{result['policy']} (replication 0)", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "current.png"), dpi=110)
        plt.close(fig)


def write_compare(out: str, results: Sequence[Mapping[str, Any]]) -> None:
    """Fill ``out`` with a comparison's files."""
    os.makedirs(out, exist_ok=True)
    _write_json(out, {"schema": 1, "runs": list(results)})
    _write_csv(out, "workloads.csv", ["policy", "workload", "offered", "admitted", "refused",
                                      "blocking", "ci_low", "ci_high"],
               [[r["policy"], *row] for r in results for row in _workload_rows(r)])
    _write_csv(out, "cgroups.csv", ["policy", "cgroup", "mean_current", "peak", "refusals"],
               [[r["policy"], p, c["mean_current"], c["peak"], c["refusals"]]
                for r in results for p, c in r["cgroups"].items()])
    _blocking_plot(os.path.join(out, "blocking.png"), results, "blocking by policy")


def write_sweep(out: str, grid: Sequence[Mapping[str, Any]]) -> None:
    """Fill ``out`` with a sweep's files."""
    os.makedirs(out, exist_ok=True)
    _write_json(out, {"schema": 1, "grid": list(grid)})
    keys = list(grid[0]["set"])
    rows = []
    for point in grid:
        res = point["results"]
        for name, w in res["workloads"].items():
            ci = w["blocking_ci95"] or [None, None]
            rows.append([*[point["set"][k] for k in keys], name, w["offered"], w["blocking"],
                         *ci, res["system"]["utilisation"], res["system"]["fairness_jain"]])
    _write_csv(out, "grid.csv", [*keys, "workload", "offered", "blocking", "ci_low", "ci_high",
                                 "utilisation", "fairness_jain"], rows)
    plt = _pyplot()
    x_key, others = keys[0], keys[1:]
    xs_all = [point["set"][x_key] for point in grid]
    numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x in xs_all)
    labels = list(dict.fromkeys(str(x) for x in xs_all))
    for metric, file, ylabel in (("blocking", "blocking.png", "blocking (refused / offered)"),
                                 ("utilisation", "utilisation.png", "utilisation"),
                                 ("fairness_jain", "fairness.png", "Jain's fairness index")):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        lines: dict[str, tuple[list[Any], list[Any]]] = {}
        for point in grid:
            rest = ", ".join(f"{k}={point['set'][k]}" for k in others)
            res = point["results"]
            x = point["set"][x_key] if numeric else labels.index(str(point["set"][x_key]))
            if metric == "blocking":
                for name, w in res["workloads"].items():
                    key = name + (f" ({rest})" if rest else "")
                    lines.setdefault(key, ([], []))[0].append(x)
                    lines[key][1].append(w["blocking"])
            else:
                key = rest or "system"
                lines.setdefault(key, ([], []))[0].append(x)
                lines[key][1].append(res["system"][metric])
        for key, (xs, ys) in lines.items():
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=key)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(x_key)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out, file), dpi=110)
        plt.close(fig)
