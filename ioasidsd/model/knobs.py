"""Semantics knobs and the profiles that group them.

The posted V4 code has defects and its reviewers argued for other designs. Each is a named knob
here, so that users can compare them. A profile is a complete set of knob values: ``fixed`` (the
default) corrects every defect, ``v4`` reproduces each one. Any knob can then be overridden
alone::

    knobs = profile("fixed", uncharge_target="current")

``docs/profiles.md`` numbers the defects (the "quirk N" of test names) and names each one's knob.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

CapacityModel = Literal["reserve", "reserve-v4", "overcommit"]
Migration = Literal["move", "stay"]
UnchargeTarget = Literal["charged", "current"]
Events = Literal["hierarchical", "v4"]
NewCgroupMax = Literal["0", "max"]
UserErrors = Literal["distinct", "v4"]
SetLifetime = Literal["explicit", "auto"]

PROFILES = ("fixed", "v4")


@dataclass(frozen=True, slots=True)
class Knobs:
    """Every semantic choice of the model, with the ``fixed`` profile's values as defaults."""

    profile: str = "fixed"

    # --- design choices the series' reviewers argued over ---------------------------------
    new_cgroup_max: NewCgroupMax = "0"
    """``ioasids.max`` of a new cgroup: ``0`` (the series' rule) or ``max``."""
    capacity_model: CapacityModel = "reserve"
    """``reserve``: a numeric limit reserves capacity, tracked per cgroup, returned on shrink and
    rmdir, ``max`` reserves nothing. ``reserve-v4``: the series' leaky reservation (``max`` takes
    what is left and reads back a number, a removed cgroup keeps its reservation).
    ``overcommit``: limits may exceed capacity; capacity is enforced at allocation."""
    migration: Migration = "move"
    """``move``: charges follow a migrating process. ``stay``: they stay where first charged."""
    uncharge_target: UnchargeTarget = "charged"
    """``charged``: reclaim uncharges the cgroup recorded at charge time. ``current``: the
    cgroup of the task doing the reclaim."""
    events: Events = "hierarchical"
    """``hierarchical``: ``ioasids.events`` counts refusals at the refusing level and its
    ancestors, ``ioasids.events.local`` at the refusing level. ``v4``: always ``max 0``."""
    user_errors: UserErrors = "distinct"
    """``distinct``: ``/dev/ioasid`` ALLOC tells causes apart, FREE reports unknown or foreign
    IDs, an unknown command is ``ENOTTY`` and a file used by a process other than its opener is
    refused with ``EPERM``. ``v4``: every ALLOC failure is ``EINVAL``, FREE always returns 0, an
    unknown command is ``EINVAL`` and only the cgroup charge stops another process."""
    set_lifetime: SetLifetime = "explicit"
    """``explicit``: a set lives until it is freed (a free of a busy set may be deferred until it
    empties). ``auto``: a set is destroyed when its last IOASID is reclaimed."""

    # --- single defects of the series (True reproduces the V4 defect) ------------------------
    set_quota_zero_takes_all: bool = False
    """Quota 0 takes all remaining capacity and set ids are bounded by it. Fixed: quota 0
    means no quota of its own (bounded by capacity and cgroups) and set ids are unbounded."""
    set_quota_leak: bool = False
    """A destroyed set's quota is not returned to the pool."""
    charge_leak_on_failure: bool = False
    """A set-quota refusal after a successful cgroup charge keeps the charge."""
    same_limit_einval: bool = False
    """Writing the current limit again fails with EINVAL (fixed: accepted, no change)."""
    uncharge_skips_defunct_mm: bool = False
    """Reclaim after the owner process died uncharges nothing."""
    cancel_attach_per_task: bool = False
    """A cancelled migration moves back one charge per task, not the IOASIDs moved."""
    free_null_set_fails: bool = False
    """``free(None, id)`` never frees (fixed: None means no ownership check)."""
    find_by_spid_get_pending: bool = False
    """``find_by_spid(get=True)`` takes references on FREE_PENDING IDs."""
    free_all_hides_pending: bool = False
    """``free_all_in_set`` removes still-referenced IDs from the set's index."""
    install_capacity_resets: bool = False
    """Installing capacity discards reservations and stays possible while the
    capacity equals the default."""
    active_state_unused: bool = False
    """ACTIVE is never entered (fixed: IDLE <-> ACTIVE as extra references come and
    go)."""
    mm_notifier_needs_empty_set: bool = False
    """Registering by mm on a set that holds IDs fails with EBUSY (fixed: allowed, the
    existing IDs are replayed to the new block as ALLOC, and BIND where a SPID is attached)."""
    user_min_zero: bool = False
    """``/dev/ioasid`` may hand out IOASID 0 (VT-d's RID_PASID)."""
    user_reopen_eexist: bool = False
    """Opening ``/dev/ioasid`` fails with EEXIST while an MM set of the process
    still exists (left by a release with FREE_PENDING IDs, or by a daemon restart). Fixed: the
    open adopts that set."""
    vtd_quirks: bool = False
    """VT-d attaches the SPID before private data, registers at priority 0, ignores
    attach_spid failures and restricts page-response lookups to the host set."""

    def replace(self, **changes: Any) -> Knobs:
        """A copy with some knobs changed; unknown names or values raise ``ValueError``."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}")
        knobs = dataclasses.replace(self, **changes)
        knobs.validate()
        return knobs

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first knob whose value is not one of its choices."""
        choices: dict[str, tuple[Any, ...]] = {
            "new_cgroup_max": ("0", "max"),
            "capacity_model": ("reserve", "reserve-v4", "overcommit"),
            "migration": ("move", "stay"),
            "uncharge_target": ("charged", "current"),
            "events": ("hierarchical", "v4"),
            "user_errors": ("distinct", "v4"),
            "set_lifetime": ("explicit", "auto"),
        }
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            allowed = choices.get(field.name)
            if allowed is not None and value not in allowed:
                raise ValueError(
                    f"knob {field.name}={value!r}: expected one of {', '.join(map(str, allowed))}"
                )
            if allowed is None and field.name != "profile" and not isinstance(value, bool):
                raise ValueError(f"knob {field.name}={value!r}: expected true or false")

    def as_dict(self) -> dict[str, Any]:
        """The knobs as a plain mapping (for status output and durable state)."""
        return dataclasses.asdict(self)

    @property
    def quirk_names(self) -> list[str]:
        """The boolean quirks that are switched on."""
        return [
            f.name
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), bool) and getattr(self, f.name)
        ]


_V4 = Knobs(
    profile="v4",
    new_cgroup_max="0",
    capacity_model="reserve-v4",
    migration="move",
    uncharge_target="current",
    events="v4",
    user_errors="v4",
    set_lifetime="auto",
    set_quota_zero_takes_all=True,
    set_quota_leak=True,
    charge_leak_on_failure=True,
    same_limit_einval=True,
    uncharge_skips_defunct_mm=True,
    cancel_attach_per_task=True,
    free_null_set_fails=True,
    find_by_spid_get_pending=True,
    free_all_hides_pending=True,
    install_capacity_resets=True,
    active_state_unused=True,
    mm_notifier_needs_empty_set=True,
    user_min_zero=True,
    user_reopen_eexist=True,
    vtd_quirks=True,
)


def profile(name: str = "fixed", **overrides: Any) -> Knobs:
    """The knobs of profile ``name`` (``fixed`` or ``v4``) with ``overrides`` applied.

    Raises ``ValueError`` for an unknown profile, knob or value.
    """
    if name == "fixed":
        base = Knobs()
    elif name == "v4":
        base = _V4
    else:
        raise ValueError(f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
    return base.replace(**overrides) if overrides else base
