"""What ``ioasidctl`` prints: the human form of each control verb's reply.

Renderers are pure functions from a verb's result (plain data, as ``--json`` prints it) to text;
the click commands in ``ioasidsd.cli.ctl`` call them. A new verb's rendering goes here.
"""

from __future__ import annotations

from itertools import repeat
from typing import Any


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    if hours or days:
        parts.append(f"{hours}h")
    if minutes or hours or days:
        parts.append(f"{minutes}m")
    parts.append(f"{secs}s")
    return "".join(parts)


def format_status(status: dict[str, Any]) -> str:
    """The human form of a status reply."""
    quirks = ", ".join(status["quirks"]) or "none"
    knobs = " ".join(f"{k}={v}" for k, v in status["knobs"].items()
                     if k != "profile" and not isinstance(v, bool))
    reserved = status["capacity"] - status["available"]
    tracking = status["tracking"]
    state = status["state"]
    unfolded = f", {state['unfolded']} changes in the journal" if state.get("unfolded") else ""
    lines = [
        ("daemon", f"pid {status['pid']}, version {status['version']}, "
                   f"up {_duration(status['uptime'])}"),
        ("profile", f"{status['profile']} (quirks on: {quirks})"),
        ("knobs", knobs),
        ("capacity", f"{status['capacity']}, available {status['available']} "
                     f"({reserved} reserved or in use)"),
        *([("over-reserved", ", ".join(f"{o['cgroup']} {o['amount']}"
                                        for o in status["over_reserved"])
                             + " (saved by an earlier version; returned when rewritten)")]
          if status.get("over_reserved") else []),
        ("root max", _root_line(status.get("root"))),
        ("cgroups", str(status["cgroups"])),
        ("processes", str(status["processes"])),
        ("IOASIDs", f"{status['ioasids']} in {status['sets']} set"
                    f"{'' if status['sets'] == 1 else 's'}"),
        ("tracking", _tracking_line(tracking)),
        ("mount", status["mount"]),
        *([("user API", f"{status['userapi']['socket']}, "
                        f"{status['userapi']['connections']} open")]
          if "userapi" in status else []),
        *([("VT-d", _vtd_line(status["vtd"]))] if "vtd" in status else []),
        ("state", f"{state['path']} (synchronous={state['synchronous']}{unfolded})"
                  + (f", ERROR: {state['error']}" if state.get("error") else "")),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in lines)


def _root_line(root: dict[str, Any] | None) -> str:
    if root is None or root.get("max") is None:
        return "max (processes in the root cgroup may take any free IOASID)"
    return f"{root['max']}, {root['current']} held by processes in the root cgroup"


def _tracking_line(tracking: dict[str, Any]) -> str:
    line = f"{tracking['mode']}: {tracking['detail']}"
    if tracking.get("state") == "degraded":
        line += f"; DEGRADED: {tracking.get('reason')}"
    orphans = tracking.get("orphans")
    if orphans:
        line += (f"; {orphans} process{'' if orphans == 1 else 'es'} of unknown origin "
                 f"(unplaced = {tracking.get('unplaced')})")
    return line


def _vtd_line(vtd: dict[str, Any]) -> str:
    mode = (f"scalable mode, {vtd['pasid_max']} PASIDs" if vtd["scalable_mode"]
            else "scalable mode off (no PASID binds)")
    bound = vtd["bound_pasids"]
    return (f"{', '.join(vtd['units'])}, {vtd['devices']} devices, {mode}, "
            f"{bound} bound PASID{'' if bound == 1 else 's'}")


def _flags(row: dict[str, Any], names: tuple[str, ...]) -> str:
    return ", ".join(name.upper() for name in names if row.get(name))


_HEX_FIELDS = frozenset({"addr", "qw0", "qw1", "value", "pgd", "gpgd"})


def _fields(event: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:#x}" if k in _HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool)
        else f"{k}={v}" for k, v in event.items() if k not in ("seq", "kind"))


def format_vtd(snap: dict[str, Any]) -> str:
    """The human form of a ``vtd`` reply (``VtdDriver.snapshot``). A filtered reply (a caller
    other than root) starts with one line saying that only the caller's processes are shown."""
    host = snap["host_set"]
    lines: list[tuple[str, str]] = []
    if snap.get("filtered"):
        lines.append(("shown", f"only the processes of uid {snap.get('viewer_uid', '?')} "
                               f"(other users' bindings, tear-downs and trace events hidden)"))
    lines.append(("VT-d", f"profile {snap['profile']}, "
                      + (f"scalable mode, {snap['pasid_max']} PASIDs" if snap["scalable_mode"]
                         else "scalable mode off")
                      + ("" if host is None else
                         f", host set {host['id']} (quota {host['quota']}, "
                         f"{host['nr_ioasids']} in use)")))
    for unit in snap["units"]:
        iq, caches = unit["iq"], unit["caches"]
        lines.append((f"unit {unit['name']}",
                       f"version {unit['version']}, PSS {unit['caps']['pss']}, "
                       f"{unit['iq']['width']}-bit QI: {iq['processed']} descriptors processed; "
                       f"cached: {caches['context']['entries']} context, "
                       f"{caches['pasid']['entries']} PASID, {caches['iotlb']['entries']} IOTLB"))
        for teardown in unit["teardowns"]:
            lines.append(("  torn down", f"PASID {teardown['pasid']} on {teardown['bdf']}: "
                                         f"{', '.join(teardown['descriptors'])}"))
    for dev in snap["devices"]:
        table = dev.get("pasid_table")
        entries = "no PASID table" if table is None else (
            f"PASID table {table['dir_pages']}+{table['leaf_pages']} pages, "
            f"{table['present']} entries present"
            + "".join(f", {n} {kind}" for kind, n in table["present_by_pgtt"].items()))
        enabled = _flags(dev, ("pasid_enabled", "ats_enabled", "pri_enabled"))
        lines.append((f"device {dev['bdf']}",
                       f"on {dev['unit']}, {dev['pasid_bits']}-bit PASIDs, "
                       f"{enabled.replace('_ENABLED', '') or 'nothing'} enabled; {entries}"))
    for bind in snap["bindings"]:
        devices = ", ".join(f"{d['bdf']} (DID {d['did']})" for d in bind["devices"])
        guest = "" if bind["gpasid"] is None else f" as guest PASID {bind['gpasid']}"
        queued = ", cleanup queued" if bind["cleanup_queued"] else ""
        lines.append((f"PASID {bind['pasid']}",
                      f"{bind['kind']}{guest}, owner pid {bind['owner_pid']}: {devices}{queued}"))
    if not snap["bindings"]:
        lines.append(("bindings", "none"))
    for section, values in snap["counters"]["total"].items():
        text = ", ".join(f"{name} {value}" for name, value in values.items())
        lines.append((f"counters {section}", text))
    width = max(len(name) for name, _ in lines)
    out = [f"{name:<{width}}  {value}" for name, value in lines]
    if snap["trace"]:
        if snap.get("filtered"):
            out.append(f"last {len(snap['trace'])} trace events about the bindings shown "
                       f"({snap['trace_seq']} in all):")
        else:
            out.append(f"last {len(snap['trace'])} of {snap['trace_seq']} trace events:")
        out.extend(f"  #{e['seq']} {e['kind']} {_fields(e)}" for e in snap["trace"])
    return "\n".join(out)


# ---------------------------------------------------------------------- tree, top, ids, events
def _limit(value: int | None) -> str:
    return "max" if value is None else str(value)


def format_tree(result: dict[str, Any], *, terminal: bool = False, colour: bool = False) -> str:
    """The human form of a ``tree`` reply, as ``systemd-cgls`` draws a tree: each cgroup with
    ``current/max`` IOASIDs (``over`` when above its limit), its processes below it (pid and
    command). Tree lines on a terminal, indentation otherwise; ``colour`` marks a cgroup over
    its limit in red."""
    rows = result["cgroups"]
    if not rows:
        return ""
    top_depth = rows[0]["path"].count("/") if rows[0]["path"] != "/" else 0
    out = []
    # the last sibling at each depth decides the tree glyphs
    entries: list[tuple[int, str, bool]] = []  # depth, text, over
    for row in rows:
        depth = 0 if row is rows[0] else (row["path"].count("/") - top_depth)
        name = row["path"] if row is rows[0] else row["path"].rsplit("/", 1)[1]
        usage = f"{row['current']}/{_limit(row['max'])}" if row["path"] != "/" else \
            f"{row['current']} in use"
        mark = " over" if row["over"] else ""
        entries.append((depth, f"{name} ({usage}{mark})", row["over"]))
        for proc in row["procs"]:
            entries.append((depth + 1, f"{proc['pid']} {proc['command'] or '?'}", False))
    for i, (depth, text, over) in enumerate(entries):
        if colour and over:
            text = f"\x1b[1;31m{text}\x1b[0m"
        if depth == 0:
            out.append(text)
            continue
        if not terminal:
            out.append("  " * depth + text)
            continue
        prefix = ""
        for level in range(1, depth):
            prefix += "│ " if _continues(entries, i, level) else "  "
        prefix += "├─" if _continues(entries, i, depth) else "└─"
        out.append(prefix + text)
    return "\n".join(out)


def _continues(entries: list[tuple[int, str, bool]], i: int, depth: int) -> bool:
    """Whether another entry at ``depth`` follows entry ``i`` before the tree leaves that
    depth."""
    for later, _, _ in entries[i + 1:]:
        if later < depth:
            return False
        if later == depth:
            return True
    return False


TOP_COLUMNS = ("Control Group", "Procs", "IOASIDs", "Max", "Peak", "Events")

_TOP_KEYS = ("current", "max", "peak", "events", "procs")
"""The numeric columns ``top`` sorts by (largest first)."""


def _top_order(columns: dict[str, list[Any]], order: str) -> list[int] | None:
    """The row indices of a ``top`` reply in ``order`` (``None``: the hierarchy's own order,
    parents first by name, which ``path`` keeps); numbers largest first, ``max``'s no limit
    first, ties in the hierarchy's order."""
    if order == "path":
        return None
    if order not in _TOP_KEYS:
        raise ValueError(f"unknown order {order!r}")
    values = columns[order]
    if order == "max":
        return sorted(range(len(values)),
                      key=lambda i: -(1 << 63) if values[i] is None else -values[i])
    return sorted(range(len(values)), key=lambda i: -(values[i] or 0))


def format_top(result: dict[str, Any], *, order: str = "path", header: bool = True) -> str:
    """A ``top`` reply as ``systemd-cgtop`` prints it: the columns of ``TOP_COLUMNS``, the
    path left-aligned and the numbers right-aligned; ``-`` where the root has none, ``over``
    after the limit of a cgroup above it. Built column by column, with the loops in C where
    it can, as a refresh may show ten thousand cgroups."""
    columns = result["columns"]
    paths = columns["path"]
    current = columns["current"]
    texts = [
        paths,
        list(map(str, columns["procs"])),
        list(map(str, current)),
        ["max" if limit is None else (f"{limit} over" if used > limit else str(limit))
         for limit, used in zip(columns["max"], current, strict=True)],
        ["-" if peak is None else str(peak) for peak in columns["peak"]],
        list(map(str, columns["events"])),
    ]
    for i, where in enumerate(paths):  # the root has no limit, peak or events
        if where == "/":
            texts[3][i] = texts[4][i] = texts[5][i] = "-"
    picked = _top_order(columns, order)
    if picked is not None:
        texts = [[column[i] for i in picked] for column in texts]
    if header:
        texts = [[title, *column] for title, column in zip(TOP_COLUMNS, texts, strict=True)]
    if not texts[0]:
        return ""
    padded = [list(map(str.ljust, texts[0], repeat(max(map(len, texts[0])))))]
    padded.extend(list(map(str.rjust, column, repeat(max(map(len, column)))))
                  for column in texts[1:])
    return "\n".join(map("  ".join, zip(*padded, strict=True)))


def format_ids(result: dict[str, Any], *, terminal: bool = False) -> str:
    """The human form of an ``ids`` reply: one row per IOASID (ID, state, set, owner pid,
    charged cgroup, SPID, VT-d bindings), with a header on a terminal."""
    table = []
    for row in result["ids"]:
        binds = "; ".join(
            f"{b['kind']}{'' if b['gpasid'] is None else ' g' + str(b['gpasid'])} "
            f"{','.join(b['devices'])}" for b in row["vtd"]) or "-"
        table.append([str(row["id"]), row["state"], str(row["set"]),
                      "-" if row["owner"] is None else str(row["owner"]),
                      row["cgroup"] or "-", "-" if row["spid"] is None else str(row["spid"]),
                      binds])
    if terminal:
        table.insert(0, ["ID", "STATE", "SET", "OWNER", "CGROUP", "SPID", "VT-D"])
    if not table:
        return ""
    widths = [max(len(r[i]) for r in table) for i in range(7)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True))
                     .rstrip() for r in table)


def format_event(item: dict[str, Any]) -> str:
    """One refusal-log entry on one line: time, pid and command, uid, the cgroup that asked,
    the level that refused, errno, request and the cause."""
    from datetime import datetime

    when = datetime.fromtimestamp(item["time"]).isoformat(sep=" ", timespec="seconds")
    request = dict(item["request"])
    ioctl = request.pop("ioctl", "?")
    args = " ".join(f"{k}={v}" for k, v in request.items())
    uid = "?" if item["uid"] is None else item["uid"]
    level = f" refused by {item['level']}" if item.get("level") else ""
    return (f"{when} pid {item['pid']} ({item['command'] or '?'}) uid {uid} in "
            f"{item['cgroup']}{level}: {item['errno']} {ioctl}"
            f"{' ' + args if args else ''}: {item['message']}")
