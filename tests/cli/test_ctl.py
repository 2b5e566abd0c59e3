"""``ioasidctl`` as real processes against a real daemon: every verb of the admin contract,
its ``--json`` shape, and the bad-input rules (one line naming the cause, exit status 1 when
refused or unreachable, 2 for bad usage, nothing changed, never a traceback)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys

import pytest

from .conftest import IOASIDCTL, Served


def one_line_error(done: subprocess.CompletedProcess[str], status: int) -> str:
    """The single stderr line of a failed command, after checking its exit status."""
    assert done.returncode == status, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("ioasidctl: ") and "Traceback" not in done.stderr
    return lines[0]


def test_bare_ioasidctl_prints_its_usage_without_an_error() -> None:
    done = subprocess.run([IOASIDCTL], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("Usage: ioasidctl")
    for verb in ("tree", "top", "get", "set", "create", "delete", "exec", "classify", "which",
                 "ids", "events", "snapshot", "restore", "status", "vtd", "alloc", "free",
                 "slice", "set-property", "run", "daemon-reload"):
        assert f"  {verb} " in done.stdout


NO_DAEMON_VERBS = [
    ("status",), ("vtd",), ("tree",), ("top",), ("ids",), ("events",), ("which", "1"),
    ("get", "/a"), ("set", "-r", "ioasids.max=1", "/a"), ("create", "/a"), ("delete", "/a"),
    ("classify", "-g", "/a", "1"), ("exec", "-g", "/a", "--", "true"), ("snapshot",),
    ("alloc",), ("free", "1"), ("slice", "list"), ("slice", "status", "a.slice"),
    ("set-property", "a.slice", "IOASIDsMax=1"), ("run", "--", "true"), ("daemon-reload",),
]


@pytest.mark.parametrize("args", NO_DAEMON_VERBS, ids=lambda a: a[0])
def test_without_a_daemon_every_verb_fails_in_one_line(tmp_path, args) -> None:
    done = subprocess.run([IOASIDCTL, "--runtime-dir", str(tmp_path), *args],
                          capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "IOASIDS_MOUNT"})
    line = one_line_error(done, 1)
    assert str(tmp_path) in line or "no daemon" in line


@pytest.mark.parametrize("args", [
    ("get",), ("get", "cpu:/a"), ("get", "../a"), ("get", "-r", "a/b", "/"),
    ("set", "/a"), ("set", "-r", "novalue", "/a"), ("set", "-r", "ioasids.max=1",
                                                    "--copy-from", "/b", "/a"),
    ("top", "--depth", "-1"), ("top", "--order", "cpu"), ("which", "abc"), ("which",),
    ("exec", "-g", "/a"), ("classify", "/a", "1"), ("tree", "/a/../b"), ("bogus",),
    ("events", "--bogus"), ("ids", "--pid", "x"), ("slice", "status"), ("slice", "bogus"),
    ("set-property", "a.slice", "IOASIDsMax"), ("set-property", "a.slice"), ("run",),
])
def test_bad_usage_is_one_line_and_status_2(served: Served, args) -> None:
    before = served.ok("snapshot")
    one_line_error(served.ctl(*args), 2)
    assert served.ok("snapshot") == before


def test_create_set_get_and_delete(served: Served) -> None:
    served.ok("create", "-p", "/cs/x/y", "ioasids:/cs/z")
    assert (served.mount / "cs/x/y").is_dir() and (served.mount / "cs/z").is_dir()
    served.ok("set", "-r", "ioasids.max=max", "/cs")  # fixed carves /cs/x's limit out of /cs's
    served.ok("set", "-r", "ioasids.max=7", "-R", "/cs/x")
    assert served.ok("get", "-n", "-v", "-r", "ioasids.max", "/cs/x", "cs/x/y") == "7\n7\n"
    served.ok("set", "--copy-from", "/cs/x", "/cs/z")
    out = served.ok("get", "-r", "ioasids.max", "-r", "ioasids.current", "/cs/z")
    assert out == "/cs/z:\nioasids.max: 7\nioasids.current: 0\n\n"
    shape = json.loads(served.ok("get", "--json", "-r", "ioasids.max", "/cs/z"))
    assert shape == {"schema": 1, "cgroups": [{"path": "/cs/z",
                                               "values": {"ioasids.max": "7"}}]}
    line = one_line_error(served.ctl("create", "/cs/x"), 1)
    assert "EEXIST" in line
    served.ok("create", "-p", "/cs/x")  # as cgcreate: an existing cgroup is no error
    line = one_line_error(served.ctl("delete", "/cs"), 1)
    assert "EBUSY" in line and "x, z" in line and "-r" in line
    served.ok("delete", "-r", "/cs")
    assert not (served.mount / "cs").exists()


def test_refused_writes_name_their_cause_and_change_nothing(served: Served) -> None:
    served.ok("create", "/rw")
    served.ok("set", "-r", "ioasids.max=3", "/rw")
    line = one_line_error(served.ctl("set", "-r", "ioasids.max=junk", "/rw"), 1)
    assert line.startswith("ioasidctl: set /rw: ioasids.max: Invalid argument (EINVAL: ")
    line = one_line_error(served.ctl("set", "-r", "ioasids.max=2000000", "/rw"), 1)
    assert line.startswith("ioasidctl: set /rw: ioasids.max: No space left on device "
                           "(ENOSPC: capacity 1048576, reserved ")
    for args in (("set", "-r", "ioasids.max=1", "/rw/none"), ("get", "/none"),
                 ("delete", "/none"), ("classify", "-g", "/none", str(os.getpid())),
                 ("get", "-r", "ioasids.none", "/rw"), ("tree", "/none"), ("top", "/none"),
                 ("ids", "/none"), ("events", "/none"), ("which", "4194304"),
                 ("restore", "/nonexistent.toml"), ("delete", "/")):
        one_line_error(served.ctl(*args), 1)
    assert served.ok("get", "-n", "-v", "-r", "ioasids.max", "/rw") == "3\n"
    served.ok("delete", "/rw")


def hold(served: Served, cgroup: str, count: int) -> subprocess.Popen[str]:
    """``ioasidctl exec -g CGROUP -- ioasidctl alloc -n COUNT --hold``, once it holds them."""
    proc = subprocess.Popen([IOASIDCTL, "--runtime-dir", str(served.daemon.run), "exec", "-g",
                             cgroup, "--", IOASIDCTL, "--runtime-dir", str(served.daemon.run),
                             "alloc", "-n", str(count), "--hold"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(count):
        assert proc.stdout.readline().strip().isdigit()
    return proc


def test_tree_top_which_ids_with_a_process_holding_ioasids(served: Served) -> None:
    served.ok("create", "-p", "/vm/a", "/vm/empty")
    served.ok("set", "-r", "ioasids.max=max", "/vm")
    served.ok("set", "-r", "ioasids.max=3", "/vm/a")
    proc = hold(served, "/vm/a", 2)
    try:
        assert served.ok("which", str(proc.pid)) == f"{proc.pid} /vm/a\n"
        tree = served.ok("tree", "/vm")
        assert tree.splitlines()[:3] == ["/vm (2/max)", "  a (2/3)", f"    {proc.pid} ioasidctl"]
        assert "empty" not in tree and "empty" in served.ok("tree", "--all", "/vm")
        # the root lists what its cgroup.procs lists: processes the daemon never tracked too
        whole = json.loads(served.ok("tree", "--json"))["cgroups"][0]
        assert whole["path"] == "/" and os.getpid() in [p["pid"] for p in whole["procs"]]
        assert os.getpid() in map(int, (served.mount / "cgroup.procs").read_text().split())
        shape = json.loads(served.ok("tree", "--json", "/vm"))
        assert shape["schema"] == 1
        assert set(shape["cgroups"][1]) == {"path", "current", "max", "peak", "events", "over",
                                            "procs"}
        rows = served.ok("top", "--depth", "1", "/vm").splitlines()
        assert [r.split() for r in rows] == [["/vm", "1", "2", "max", "2", "0"],
                                             ["/vm/a", "1", "2", "3", "2", "0"],
                                             ["/vm/empty", "0", "0", "0", "0", "0"]]
        two = served.ok("top", "-n", "2", "-d", "0.1", "--order", "max", "/vm")
        assert [r.split()[0] for r in two.splitlines()] == ["/vm", "/vm/a", "/vm/empty"] * 2
        shape = json.loads(served.ok("top", "--json", "/vm"))
        assert shape["schema"] == 1 and shape["columns"]["path"] == ["/vm", "/vm/a",
                                                                     "/vm/empty"]
        assert [shape["columns"][k][0] for k in ("procs", "current", "max", "peak",
                                                 "events")] == [1, 2, None, 2, 0]
        ids = json.loads(served.ok("ids", "--json", "--pid", str(proc.pid)))
        assert ids["schema"] == 1 and [r["cgroup"] for r in ids["ids"]] == ["/vm/a"] * 2
        assert set(ids["ids"][0]) == {"id", "state", "set", "owner", "cgroup", "spid", "vtd"}
        assert len(served.ok("ids", "/vm/a").splitlines()) == 2
        # moving the holder into a cgroup with a smaller limit makes current > max
        served.ok("classify", "-g", "/vm/empty", str(proc.pid))
        assert "empty (2/0 over)" in served.ok("tree", "/vm")
        assert served.ok("top", "/vm/empty").split() == ["/vm/empty", "1", "2", "0", "over",
                                                         "2", "0"]
        # delete moves the holder to the parent first, as cgdelete does
        served.ok("delete", "/vm/empty")
        assert served.ok("which", str(proc.pid)) == f"{proc.pid} /vm\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    served.ok("delete", "-r", "/vm")


def test_exec_runs_the_command_in_the_cgroup_and_exits_with_its_status(served: Served) -> None:
    served.ok("create", "/ex")
    done = served.ctl("exec", "-g", "/ex", "--", sys.executable, "-c",
                      f"import os, subprocess, sys; subprocess.run([{IOASIDCTL!r}, "
                      f"'--runtime-dir', {str(served.daemon.run)!r}, 'which', "
                      f"str(os.getpid())]); sys.exit(3)")
    assert done.returncode == 3 and done.stdout.split()[1] == "/ex"
    line = one_line_error(served.ctl("exec", "-g", "/ex", "--", "/nonexistent/cmd"), 127)
    assert "not found" in line
    served.ok("delete", "/ex")


def test_a_refusal_is_in_the_log_and_follow_streams_new_ones(served: Served) -> None:
    served.ok("create", "/ev")
    served.ok("set", "-r", "ioasids.max=1", "/ev")
    follow = subprocess.Popen([IOASIDCTL, "--runtime-dir", str(served.daemon.run), "events",
                               "--follow", "--json", "/ev"], stdout=subprocess.PIPE, text=True)
    try:
        done = served.ctl("exec", "-g", "/ev", "--", IOASIDCTL, "--runtime-dir",
                          str(served.daemon.run), "alloc", "-n", "2")
        line = one_line_error(done, 1)
        assert "EAGAIN" in line and "/ev" in line and "ioasids.max 1" in line
        log = json.loads(served.ok("events", "--json", "/ev"))
        assert log["schema"] == 1 and len(log["events"]) == 1
        entry = log["events"][0]
        assert set(entry) >= {"time", "pid", "command", "uid", "cgroup", "level", "errno",
                              "request"}
        assert (entry["cgroup"], entry["level"], entry["errno"], entry["uid"]) == (
            "/ev", "/ev", "EAGAIN", 0)
        assert entry["request"]["ioctl"] == "REQUEST_ALLOC"
        assert entry["command"] == "ioasidctl"
        text = served.ok("events", "/ev")
        assert "refused by /ev: EAGAIN REQUEST_ALLOC" in text
        assert follow.stdout is not None
        ready, _, _ = select.select([follow.stdout], [], [], 30)
        assert ready, "events --follow printed nothing"
        assert json.loads(follow.stdout.readline())["seq"] == entry["seq"]
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
    served.ok("delete", "/ev")


def test_snapshot_and_restore_round_trip(served: Served, tmp_path) -> None:
    served.ok("create", "-p", "/snap/a/b", "/snap/c")
    served.ok("set", "-r", "ioasids.max=max", "/snap")
    served.ok("set", "-r", "ioasids.max=4", "/snap/a")
    served.ok("set", "-r", "notify_on_release=1", "/snap/c")
    saved = tmp_path / "snap.toml"
    served.ok("snapshot", "-o", str(saved))
    text = saved.read_text()
    assert text.startswith("schema = 1\n") and '["/snap/a"]\n' in text
    served.ok("set", "-r", "ioasids.max=9", "/snap/a")
    line = one_line_error(served.ctl("restore", str(saved)), 1)
    assert "/snap/a ioasids.max: 9 -> 4" in line and "--force" in line
    assert served.ok("get", "-n", "-v", "-r", "ioasids.max", "/snap/a") == "9\n"
    served.ok("restore", "--force", str(saved))
    assert served.ok("snapshot") == text
    served.ok("delete", "-r", "/snap")
    served.ok("restore", str(saved))
    assert served.ok("snapshot") == text
    bad = tmp_path / "bad.toml"
    bad.write_text('schema = 1\n["/x"]\nbogus = "1"\n')
    one_line_error(served.ctl("restore", str(bad)), 1)
    assert not (served.mount / "x").exists()
    served.ok("delete", "-r", "/snap")


def test_a_restore_the_daemon_would_refuse_part_way_changes_nothing(served: Served,
                                                                     tmp_path) -> None:
    """The third step of this snapshot is refused (a child's limit larger than what its
    parent's limit leaves, ENOSPC): the cgroups and the limit before it are not made either."""
    before = served.ok("snapshot")
    bad = tmp_path / "refused.toml"
    bad.write_text('schema = 1\n["/rr"]\n"ioasids.max" = "5"\n'
                   '["/rr/a"]\n"ioasids.max" = "4"\n["/rr/b"]\n"ioasids.max" = "2"\n')
    line = one_line_error(served.ctl("restore", str(bad)), 1)
    assert "ENOSPC" in line and "/rr/b ioasids.max" in line and "nothing changed" in line
    assert not (served.mount / "rr").exists()
    assert served.ok("snapshot") == before
    # a path the daemon refuses to make (a newline in a name) is refused whole as well
    bad.write_text('schema = 1\n["/rq"]\n"ioasids.max" = "1"\n["/rq/a\\nb"]\n')
    line = one_line_error(served.ctl("restore", str(bad)), 1)
    assert "EINVAL" in line and "nothing changed" in line
    assert served.ok("snapshot") == before


def test_a_restore_refused_while_it_is_applied_is_undone(served: Served, tmp_path) -> None:
    """When a step is refused after the rehearsal passed (here: the snapshot is too long to be
    rehearsed in one request), the steps already made are undone."""
    before = served.ok("snapshot")
    big = tmp_path / "big.toml"
    tables = "".join(f'["/ru/c{i:04}"]\n"ioasids.max" = "1"\n' for i in range(1500))
    big.write_text(f'schema = 1\n["/ru"]\n"ioasids.max" = "1499"\n{tables}')
    line = one_line_error(served.ctl("restore", str(big)), 1)
    assert "ENOSPC" in line and "/ru/c1499 ioasids.max" in line and "nothing changed" in line
    assert not (served.mount / "ru").exists()
    assert served.ok("snapshot") == before


def test_a_user_may_do_what_the_file_system_lets_it_and_sees_its_own(served: Served,
                                                                     tenant) -> None:
    served.ok("create", "/ten")
    served.ok("set", "-r", "ioasids.max=1", "/ten")
    os.chown(served.mount / "ten" / "cgroup.procs", tenant.uid, tenant.gid)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C.UTF-8"}
    line = one_line_error(served.ctl("set", "-r", "ioasids.max=5", "/ten", user=tenant,
                                     env=env), 1)
    assert "Permission denied (EACCES" in line
    one_line_error(served.ctl("create", "/ten/sub", user=tenant, env=env), 1)
    # the tenant moves itself in (its cgroup.procs is delegated) and is refused a second ID
    done = served.ctl("exec", "-g", "/ten", "--", IOASIDCTL, "--runtime-dir",
                      str(served.daemon.run), "alloc", "-n", "2", user=tenant, env=env)
    assert done.returncode == 1 and "EAGAIN" in done.stderr
    served.ok("create", "/other")
    served.ok("set", "-r", "ioasids.max=0", "/other")
    served.ctl("exec", "-g", "/other", "--", IOASIDCTL, "--runtime-dir",
               str(served.daemon.run), "alloc")
    mine = json.loads(served.ctl("events", "--json", user=tenant, env=env).stdout)
    assert mine["filtered"] is True
    assert {e["uid"] for e in mine["events"]} == {tenant.uid}
    every = json.loads(served.ok("events", "--json"))
    assert {0, tenant.uid} <= {e["uid"] for e in every["events"]}
    assert served.ctl("tree", user=tenant, env=env).returncode == 0
    served.ok("delete", "/ten", "/other")


def test_a_users_refused_restore_is_undone(served: Served, tenant, open_tmp) -> None:
    """A user other than root gets no rehearsal (it would copy the whole model): its restore
    is applied through the mount as the file system lets it, and a refused step has the steps
    before it undone."""
    served.ok("create", "/deleg")
    served.ok("set", "-r", "ioasids.max=2", "/deleg")
    os.chown(served.mount / "deleg", tenant.uid, tenant.gid)
    before = served.ok("snapshot")
    wanted = open_tmp / "deleg.toml"
    wanted.write_text('schema = 1\n["/deleg/a"]\n"ioasids.max" = "2"\n'
                      '["/deleg/b"]\n"ioasids.max" = "1"\n')
    wanted.chmod(0o644)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LC_ALL": "C.UTF-8"}
    line = one_line_error(served.ctl("restore", str(wanted), user=tenant, env=env), 1)
    assert "ENOSPC" in line and "/deleg/b ioasids.max" in line and "nothing changed" in line
    assert served.ok("snapshot") == before
    served.ok("delete", "/deleg")


def test_the_daemon_logs_changes_and_one_user_cannot_flood_the_log(served: Served,
                                                                   tenant) -> None:
    """A user's changes through the mount are logged at most ``burst`` lines per window of
    ``interval`` seconds (``ioasidsd.clients.ClientLogLimit``: 10 per 5 s), however many it
    makes; root's own are all logged."""
    import time

    served.ok("create", "/flood")
    os.chown(served.mount / "flood", tenant.uid, tenant.gid)
    where = served.mount / "flood"
    changes = 400
    script = (f"import os\nfor i in range({changes // 2}):\n"
              f"    os.mkdir('{where}/%d' % i)\n    os.rmdir('{where}/%d' % i)\n")
    start = time.monotonic()
    done = tenant.run(["/usr/bin/python3", "-c", script])
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    served.ok("delete", "/flood")
    lines = served.daemon.events()
    made = [e for e in lines if e.get("event") == "cgroup created"]
    assert any(e["cgroup"] == "/flood" for e in made)  # root's own change is logged
    theirs = [e for e in lines if e.get("client_uid") == tenant.uid
              and e.get("cgroup", "").startswith("/flood/")]
    assert theirs and {e["event"] for e in theirs} <= {"cgroup created", "cgroup removed"}
    windows = int(elapsed // 5) + 2  # the windows the loop overlapped, at most
    assert len(theirs) <= 10 * windows < changes, (len(theirs), elapsed)


def test_a_bad_value_for_several_cgroups_changes_none_of_them(served: Served) -> None:
    served.ok("create", "-p", "/bv/a", "/bv/b")
    # fixed carves the children's limits out of /bv's: 4 and 4 of its 8
    served.ok("set", "-r", "ioasids.max=8", "/bv")
    served.ok("set", "-r", "ioasids.max=4", "/bv/a", "/bv/b")
    for value in ("junk", "-1", "99999999999999999999"):
        line = one_line_error(served.ctl("set", "-r", "ioasids.max=1", "-r",
                                         f"ioasids.max={value}", "-R", "/bv"), 1)
        assert "(EINVAL: " in line or "(ERANGE: " in line
    one_line_error(served.ctl("set", "-r", "ioasids.max=1", "-r", "nosuch=1", "/bv"), 1)
    assert served.ok("get", "-n", "-v", "-r", "ioasids.max", "/bv", "/bv/a", "/bv/b") == \
        "8\n4\n4\n"
    served.ok("delete", "-r", "/bv")


def test_shell_completion_offers_verbs_and_cgroup_paths(served: Served) -> None:
    served.ok("create", "-p", "/comp/alpha", "/comp/beta")
    env = dict(os.environ, _IOASIDCTL_COMPLETE="bash_complete", IOASIDS_MOUNT=str(served.mount))

    def complete(*words: str) -> list[str]:
        line = ["ioasidctl", *words]
        done = subprocess.run([IOASIDCTL], env={**env, "COMP_WORDS": " ".join(line),
                                                "COMP_CWORD": str(len(line) - 1)},
                              capture_output=True, text=True, check=False)
        return [item.split(",", 1)[1] for item in done.stdout.split()]

    assert "tree" in complete("tr")
    assert complete("get", "/comp/") == ["/comp/alpha", "/comp/beta"]
    assert complete("tree", "ioasids:/comp/a") == ["ioasids:/comp/alpha"]
    for shell in ("bash", "zsh", "fish"):
        done = subprocess.run([IOASIDCTL], env={**env, "_IOASIDCTL_COMPLETE": f"{shell}_source"},
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0 and "ioasidctl" in done.stdout
    served.ok("delete", "-r", "/comp")


def on_terminal(served: Served, *args: str, env: dict[str, str] | None = None) -> str:
    """What ``ioasidctl ARGS`` shows on a terminal (a pty), once it has exited."""
    import pty

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([IOASIDCTL, "--runtime-dir", str(served.daemon.run), *args],
                                stdin=slave, stdout=slave, stderr=slave,
                                env={**os.environ, "TERM": "xterm", **(env or {})})
        os.close(slave)
        out = b""
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"ioasidctl {args} printed nothing more: {out!r}"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side closed
                break
            if not data:
                break
            out += data
        assert proc.wait(30) == 0, out
        return out.decode(errors="replace")
    finally:
        os.close(master)


def test_on_a_terminal_top_refreshes_a_screen_and_tree_draws_lines_and_colour(
        served: Served) -> None:
    served.ok("create", "-p", "/term/full", "/term/zero")
    served.ok("set", "-r", "ioasids.max=max", "/term")
    served.ok("set", "-r", "ioasids.max=2", "/term/full")
    proc = hold(served, "/term/full", 1)
    try:
        served.ok("classify", "-g", "/term/zero", str(proc.pid))
        screen = on_terminal(served, "top", "-n", "2", "-d", "0.1", "/term")
        # a full-screen view (curses: the terminal's alternate screen) with the header, ended
        # by itself after two refreshes (on_terminal checks the exit status)
        assert "\x1b[?1049h" in screen and "Control Group" in screen and "/term/zero" in screen
        tree = on_terminal(served, "tree", "--all", "/term")
        assert tree.split("\r\n")[:4] == ["/term (1/max)", "├─full (0/2)",
                                          "└─\x1b[1;31mzero (1/0 over)\x1b[0m",
                                          f"  └─{proc.pid} ioasidctl"]
        plain = on_terminal(served, "tree", "--all", "/term", env={"NO_COLOR": "1"})
        assert "└─zero (1/0 over)" in plain and "\x1b[" not in plain
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    served.ok("delete", "-r", "/term")


def test_snapshot_and_restore_round_trip_on_a_v2_hierarchy(daemons, tmp_path) -> None:
    """On cgroup v2 a snapshot keeps what enables the controller below a cgroup
    (``cgroup.subtree_control``) and the tree limits, so that restore can give children their
    ``ioasids.max``."""
    d = daemons("--hierarchy", "v2").start()

    def ctl(*args: str) -> str:
        done = d.ctl(*args)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout

    ctl("create", "-p", "/v/a")
    ctl("set", "-r", "cgroup.subtree_control=+ioasids", "/")
    ctl("set", "-r", "cgroup.subtree_control=+ioasids", "/v")
    ctl("set", "-r", "ioasids.max=max", "/v")
    ctl("set", "-r", "ioasids.max=7", "-r", "cgroup.max.depth=3", "/v/a")
    saved = tmp_path / "v2.toml"
    ctl("snapshot", "-o", str(saved))
    text = saved.read_text()
    assert '"cgroup.subtree_control" = "ioasids"' in text and '"ioasids.max" = "7"' in text
    ctl("delete", "-r", "/")
    ctl("set", "-r", "cgroup.subtree_control=-ioasids", "/")
    ctl("restore", str(saved))
    assert ctl("snapshot") == text
    assert ctl("get", "-n", "-v", "-r", "ioasids.max", "/v/a") == "7\n"


def test_classify_moves_every_process_it_can_as_cgclassify_does(served: Served) -> None:
    """A pid that cannot be moved is named on its own line; the others are still moved, and
    the exit status says something failed."""
    served.ok("create", "/cls")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        done = served.ctl("classify", "-g", "/cls", "4194304", str(sleeper.pid))
        assert done.returncode == 1
        assert [line for line in done.stderr.splitlines()
                if line.startswith("ioasidctl: ")] == [
            line for line in done.stderr.splitlines() if "4194304" in line]
        assert served.ok("which", str(sleeper.pid)) == f"{sleeper.pid} /cls\n"
    finally:
        sleeper.kill()
        sleeper.wait()
    served.ok("delete", "/cls")
