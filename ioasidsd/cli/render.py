"""What ``ioasidctl`` prints: the human form of each control verb's reply.

Renderers are pure functions from a verb's result (plain data, as ``--json`` prints it) to text;
the click commands in ``ioasidsd.cli.ctl`` call them. A new verb's rendering goes here.
"""

from __future__ import annotations

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
