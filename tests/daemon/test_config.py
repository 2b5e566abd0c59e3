"""``ioasidsd.daemon.config``: defaults, file, flags over file, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ioasidsd.daemon.config import Config, ConfigError, load_config, reload_changes


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ioasidsd.toml"
    path.write_text(text)
    return path


def test_defaults_are_design_md_s():
    config = load_config()
    assert config.mount == Path("/sys/fs/cgroup/ioasids")
    assert config.state_dir == Path("/var/lib/ioasidsd")
    assert config.runtime_dir == Path("/run/ioasidsd")
    assert config.profile == "fixed" and config.capacity is None
    assert config.semantics().profile == "fixed"


def test_file_then_flags_win(tmp_path):
    path = write(tmp_path, """
mount = "/mnt/a"
capacity = 4096
profile = "v4"
poll_interval = 2
[knobs]
migration = "stay"
[[vtd.unit]]
name = "dmar0"
pss = 15
""")
    config = load_config(path, {"mount": "/mnt/b", "capacity": None, "profile": None})
    assert config.mount == Path("/mnt/b")  # the flag
    assert config.capacity == 4096 and config.profile == "v4"  # the file
    assert config.poll_interval == 2.0
    knobs = config.semantics()
    assert knobs.profile == "v4" and knobs.migration == "stay"
    assert knobs.uncharge_target == "current"  # v4's, not overridden
    assert config.vtd == {"unit": [{"name": "dmar0", "pss": 15}]}
    assert config.config_file == path


@pytest.mark.parametrize("text, message", [
    ('mount = "/x"\nstate-dir = "/y"\n', "unknown setting 'state-dir' (did you mean 'state_dir'?)"),
    ("capacity = 0\n", "capacity = 0: expected an integer"),
    ("capacity = 4294967297\n", "capacity = 4294967297"),
    ('capacity = "1"\n', "capacity = '1'"),
    ('profile = "v5"\n', "profile = 'v5': expected one of fixed, v4"),
    ('log_format = "xml"\n', "log_format = 'xml'"),
    ("poll_interval = 0\n", "poll_interval = 0"),
    ("knobs = 3\n", "[knobs] must be a table"),
    ('[knobs]\nmigration = "teleport"\n', "knob migration='teleport'"),
    ('[knobs]\nno_such_knob = true\n', "unknown knob(s): no_such_knob"),
    ('[knobs]\nprofile = "v4"\n', "top-level setting"),
    ("mount = \n", "not valid TOML"),
    ("[[vtd.unit]]\nname = \"dmar0\"\nwings = 2\n", "vtd.unit[0]: unknown key(s) wings"),
    ("[[vtd.device]]\nbdf = \"0000:03:00.0\"\nunit = \"dmar9\"\n", "no unit named 'dmar9'"),
])
def test_bad_files_name_the_file_and_setting(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_bad_flag_is_blamed_on_the_command_line():
    with pytest.raises(ConfigError, match="command line: capacity = -5"):
        load_config(None, {"capacity": -5})


def test_toml_zero_for_new_cgroup_max(tmp_path):
    path = write(tmp_path, "[knobs]\nnew_cgroup_max = 0\n")
    assert load_config(path).semantics().new_cgroup_max == "0"


def test_reload_splits_live_and_restart_settings():
    running = Config()
    new = Config(log_level="debug", poll_interval=5.0, mount=Path("/elsewhere"), profile="v4")
    applied, pending = reload_changes(running, new)
    assert applied == {"log_level": "debug", "poll_interval": 5.0}
    assert sorted(pending) == ["mount", "profile"]


def test_the_shipped_example_is_valid_and_all_defaults():
    example = Path(__file__).parents[2] / "systemd" / "ioasidsd.toml"
    assert load_config(example) == Config(config_file=example)


def test_limits_root_max(tmp_path):
    assert load_config().root_max is None  # max, the kernel's behaviour
    assert load_config(write(tmp_path, "[limits]\nroot_max = 100\n")).root_max == 100
    assert load_config(write(tmp_path, '[limits]\nroot_max = "max"\n')).root_max is None
    assert load_config(write(tmp_path, "[limits]\nroot_max = 0\n")).root_max == 0
    for text, message in (("[limits]\nroot_max = -1\n", "[limits]: root_max = -1: expected"),
                          ('[limits]\nroot_max = "lots"\n', "root_max = 'lots'"),
                          ("[limits]\nroot_max = true\n", "root_max = True"),
                          ("[limits]\nroot_mux = 3\n", "unknown setting [limits] 'root_mux'"),
                          ("limits = 3\n", "[limits] must be a table"),
                          ("root_max = 3\n", "unknown setting 'root_max'")):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        assert message in str(info.value), (text, str(info.value))
    applied, pending = reload_changes(Config(), Config(root_max=10))
    assert applied == {"root_max": 10} and pending == []
