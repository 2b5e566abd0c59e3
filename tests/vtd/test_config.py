"""Building the VT-d system from the daemon's configuration, and the snapshot it shows."""

from __future__ import annotations

import json
import tomllib

import pytest

from ioasidsd.model import IoasidCore, profile
from ioasidsd.vtd import build_driver, default_config, parse_config

CONFIG = """
[vtd]
host_quota = 1000
teardown = "2020"

[[vtd.unit]]
name = "dmar0"
pss = 19
CM = true
version = 0x30
vcs = true
vcmd_layout = "3.1"
strict_sm_128bit = false

[[vtd.unit]]
name = "dmar1"
pss = 15
nest = false

[[vtd.device]]
bdf = "0000:03:00.0"
unit = "dmar0"

[[vtd.device]]
bdf = "80:01.2"
unit = "dmar1"
pasid_bits = 16
ats = false
pri = false
"""


def test_default_configuration() -> None:
    assert parse_config(None) == parse_config({}) == default_config()
    drv = build_driver(IoasidCore())
    assert list(drv.units) == ["dmar0"] and drv.pasid_max == 1 << 20
    assert sorted(drv.devices) == ["0000:03:00.0", "0000:04:00.0"]
    assert drv.info("03:00.0").pri_enabled and not drv.info("04:00.0").pri_enabled
    assert drv.host_set.quota == 32768


def test_configuration_from_toml() -> None:
    config = parse_config(tomllib.loads(CONFIG)["vtd"])
    core = IoasidCore(profile("fixed"))
    drv = build_driver(core, config)
    assert drv.options.host_quota == 1000 and drv.options.teardown == "2020"
    u0, u1 = drv.units["dmar0"], drv.units["dmar1"]
    assert u0.caps.cm and u0.version == 0x30 and u0.vcmd_layout.name == "3.1"
    assert not u0.options.strict_sm_128bit
    assert u0.regs.offset_of("VCCAP") == 0xE00
    assert u1.caps.pss == 15 and not u1.caps.nest
    assert drv.pasid_max == 1 << 16 and core.capacity == 1 << 16  # the minimum over units
    dev = drv.devices["0000:80:01.2"]
    assert dev.unit is u1 and dev.sid == 0x800A and not dev.ats
    table = drv.info("80:01.2").table
    assert (table.max_pasid, table.dir_pages, table.pdts) == (1 << 16, 2, 3)


@pytest.mark.parametrize(("table", "message"), [
    ({"unit": [{"name": "a", "bogus": 1}]}, r"vtd.unit\[0\]: unknown key\(s\) bogus"),
    ({"unit": [{"pss": 40}]}, r"vtd.unit\[0\]: capability pss=40"),
    ({"unit": [{"nest": 1}]}, "nest must be true or false"),
    ({"unit": [{"pss": True}]}, "pss must be an integer"),
    ({"unit": [{"vcmd_layout": "9"}]}, "vcmd_layout"),
    ({"unit": [{"name": "a"}, {"name": "a"}]}, "duplicate unit names"),
    ({"unit": [{"name": "a"}, {"name": "b"}], "device": [{"bdf": "1:0.0"}]},
     "unit is required"),
    ({"device": [{"bdf": "1:0.0", "unit": "nope"}]}, "no unit named 'nope'"),
    ({"device": [{"bdf": "zz"}]}, "bad PCI address"),
    ({"device": [{"bdf": "1:0.0", "pasid_bits": 21}]}, "pasid_bits"),
    ({"device": [{"bdf": "1:0.0"}, {"bdf": "0000:01:00.0"}]}, "duplicate BDFs"),
    ({"device": [{}]}, "bdf is required"),
    ({"teardown": "1999"}, "teardown"),
    ({"prq_order": 9}, "prq_order"),
    ({"unknown": 1}, r"vtd: unknown key\(s\) unknown"),
])
def test_bad_configuration_is_refused_with_a_clear_message(table: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(table)


def test_devices_only_use_the_default_unit() -> None:
    config = parse_config({"device": [{"bdf": "0000:07:00.0", "pri": False}]})
    assert [u.name for u in config.units] == ["dmar0"]
    assert [(dv.bdf, dv.unit, dv.pri) for dv in config.devices] == [
        ("0000:07:00.0", "dmar0", False)]


def test_snapshot_is_plain_data() -> None:
    core = IoasidCore(profile("v4"))
    drv = build_driver(core)
    from ioasidsd.model import IoasidsController

    cgroups = IoasidsController(core).hierarchy
    proc = cgroups.track(10, 1.0)
    pasid = drv.bind_mm(proc, "03:00.0")
    snap = drv.snapshot(events=7)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["profile"] == "v4" and snap["vtd_quirks"] is True
    assert len(snap["trace"]) == 7 and snap["trace"][-1]["kind"] == "bind"
    assert snap["bindings"] == [{"pasid": pasid, "kind": "native", "gpasid": None,
                                 "owner_pid": 10, "cleanup_queued": False,
                                 "devices": [{"bdf": "0000:03:00.0", "did": 1, "users": 1}]}]
    dev = next(x for x in snap["devices"] if x["bdf"] == "0000:03:00.0")
    assert dev["pasid_table"]["present_by_pgtt"] == {"fl_only": 1}
    assert dev["pasid_table"]["dir_pages"] == 32 and dev["pasid_table"]["leaf_pages"] == 1
    assert snap["memory"]["live"]["pasid_dir"] == 64
    unit = snap["units"][0]
    assert unit["iq"]["width"] == 256 and unit["iq"]["entries"] == 256
    assert snap["counters"]["total"]["desc"]["inv_wait"] >= 3
    assert snap["host_set"]["nr_ioasids"] == 1
    assert snap["totals"] == {"bound_pasids": 1, "device_bindings": 1,
                              "present_by_pgtt": {"fl_only": 1}, "pasid_table_pages": 65,
                              "pasid_table_pages_peak": 65}
