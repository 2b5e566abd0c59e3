"""The unit files shipped in ``systemd/``, judged by systemd's own tools: ``systemd-analyze
verify`` accepts each of them (the service as ``scripts/install`` installs it), and
``systemd-analyze security`` scores the service's hardening."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ioasidsd.daemon.config import load_config
from ioasidsd.slices.limits import IOASIDsMax, configured_ioasids_max, parse_ioasids_max
from ioasidsd.slices.names import check_slice_name, slice_parent
from ioasidsd.slices.units import SearchPath, load_unit

TOP = Path(__file__).resolve().parents[2]
SYSTEMD = TOP / "systemd"
SLICES = SYSTEMD / "slices"
VENDOR_UNITS = Path("/usr/lib/systemd/system")
EXPOSURE_MAX = 3.9
"""The exposure ``systemd-analyze security --offline=yes`` gave the hardened unit; it must not
grow."""

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed")


def analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def make_root(root: Path) -> None:
    """A file-system root holding what the service's dependencies need to load: systemd's
    vendor units and ``/bin/kill`` (its ``ExecReload=``), as on a Debian machine."""
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(VENDOR_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    shutil.copy2(shutil.which("kill") or "/usr/bin/kill", root / "usr" / "bin" / "kill")


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TOP / "scripts" / "install"), "--root", str(root)],
                          capture_output=True, text=True, timeout=300, check=False)


def exec_start(unit: Path) -> list[str]:
    line = next(line for line in unit.read_text().splitlines() if line.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()


@pytest.mark.skipif(not VENDOR_UNITS.is_dir(), reason="no systemd vendor units on this machine")
def test_the_service_verifies_as_installed(tmp_path):
    root = tmp_path / "root"
    make_root(root)
    installed = root / "etc" / "systemd" / "system" / "ioasidsd.service"
    # before the install steps, the command the unit names is missing: verify says so
    root.joinpath("etc", "systemd", "system").mkdir(parents=True)
    shutil.copy2(SYSTEMD / "ioasidsd.service", installed)
    before = analyze("verify", f"--root={root}", str(installed))
    assert "/usr/local/bin/ioasidsd is not executable" in before.stderr

    done = install(root)
    assert done.returncode == 0, done.stderr
    verified = analyze("verify", f"--root={root}", str(installed))
    assert (verified.returncode, verified.stderr) == (0, "")
    assert installed.read_text() == (SYSTEMD / "ioasidsd.service").read_text()
    # the command it starts is the daemon, and the configuration it names was installed
    program, *args = exec_start(installed)
    ran = subprocess.run([str(root / program.lstrip("/")), *args, "--help"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and "Serve the hierarchy" in ran.stdout
    config = root / args[args.index("--config") + 1].lstrip("/")
    assert config.read_text() == (SYSTEMD / "ioasidsd.toml").read_text()
    assert load_config(config).mount == Path("/sys/fs/cgroup/ioasids")


def test_install_keeps_an_existing_configuration(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "ioasidsd.toml").write_text('log_level = "debug"\n')
    assert install(root).returncode == 0
    assert (root / "etc" / "ioasidsd.toml").read_text() == 'log_level = "debug"\n'
    assert os.access(root / "usr" / "local" / "bin" / "ioasidctl", os.X_OK)


def shipped_slices() -> list[str]:
    """Every slice the project ships: unit files, and the slices its drop-ins configure."""
    names = {p.name for p in SLICES.glob("*.slice")}
    names |= {p.name.removesuffix(".d") for p in SLICES.glob("*.slice.d")}
    return sorted(names)


def test_every_shipped_slice_verifies_clean():
    names = shipped_slices()
    assert {"machine.slice", "tenant.slice", "tenant-a.slice", "tenant-b.slice"} <= set(names)
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{SLICES}:")  # ours first, then systemd's
    done = analyze("verify", *names, env=env)
    assert (done.returncode, done.stderr) == (0, "")


def test_the_bare_property_draws_a_warning_the_x_spelling_does_not(tmp_path):
    """Why the shipped units spell the limit ``X-IOASIDsMax=``."""
    for key, warned in (("IOASIDsMax", True), ("X-IOASIDsMax", False)):
        unit = tmp_path / key / "tenant-c.slice"
        unit.parent.mkdir()
        unit.write_text(f"[Slice]\n{key}=10\n")
        done = analyze("verify", str(unit))
        assert ("Unknown key 'IOASIDsMax'" in done.stderr) is warned, done.stderr


def test_the_example_slices_configure_their_limits():
    search = SearchPath(path=(SLICES, VENDOR_UNITS))
    infinity = parse_ioasids_max("infinity")
    expected = {"machine.slice": "25%", "tenant.slice": "50%", "tenant-a.slice": "4096",
                "tenant-b.slice": "1024"}
    for name, value in expected.items():
        check_slice_name(name)
        unit = load_unit(name, search)
        limit = configured_ioasids_max(unit, infinity)
        assert limit.value == parse_ioasids_max(value), name
        assert limit.source is not None and limit.source.key == "X-IOASIDsMax"
    assert slice_parent("tenant-a.slice") == slice_parent("tenant-b.slice") == "tenant.slice"
    assert parse_ioasids_max("50%").resolve(1 << 20) == 1 << 19
    assert isinstance(infinity, IOASIDsMax)


def security() -> tuple[float, list[str]]:
    """The overall exposure of the shipped service and the settings it is marked down for."""
    done = analyze("security", "--offline=yes", str(SYSTEMD / "ioasidsd.service"))
    found = re.search(r"Overall exposure level for ioasidsd\.service: ([0-9.]+)", done.stdout)
    assert found, done.stdout + done.stderr
    missing = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("✗")]
    return float(found.group(1)), missing


def test_the_exposure_stays_low():
    exposure, _ = security()
    assert exposure <= EXPOSURE_MAX


def test_each_hardening_option_left_out_says_why():
    """Every setting ``systemd-analyze security`` marks down is named in a comment of the
    unit (where the unit says why it is left out)."""
    _, missing = security()
    assert missing  # mounting needs root: some remain
    comments = "\n".join(line for line in (SYSTEMD / "ioasidsd.service").read_text().splitlines()
                         if line.startswith("#"))
    for setting in missing:
        # "CapabilityBoundingSet=~CAP_SYS_ADMIN" -> CAP_SYS_ADMIN; "User=/DynamicUser=" -> User=
        name = setting.split("=~")[-1] if "=~" in setting else setting.split("/")[0]
        name = name.split("=")[0]
        if name.startswith("CAP_("):
            name = "CAP_DAC_OVERRIDE"
        assert name in comments, f"{setting}: no comment says why it is left out"
