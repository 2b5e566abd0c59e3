"""A saved state made with other settings: the daemon refuses it in one short line that names
the way out, and ``--reset-state`` moves it aside (never deleting it) and starts afresh."""

from __future__ import annotations

from .daemons import mounted


def test_a_foreign_state_is_refused_in_one_short_line_and_reset_state_moves_it_aside(daemons):
    d = daemons("--profile", "v4").start()
    (d.mount / "a").mkdir()
    assert d.stop() == 0
    saved = (d.state / "state.sqlite").read_bytes()

    refused = daemons(name="fixed")
    refused.start(ready=False)
    assert refused.wait() == 1
    errors = [e for e in refused.events() if e.get("level") == "error"]
    assert len(errors) == 1
    message = errors[0]["event"]
    assert "profile 'v4' (now 'fixed')" in message and "--reset-state" in message
    assert len(message) < 250
    assert not mounted(refused.mount)

    fresh = daemons("--reset-state", name="reset").start()
    assert not (fresh.mount / "a").exists()
    assert fresh.status()["profile"] == "fixed"
    aside = sorted(fresh.state.glob("saved-*"))
    assert len(aside) == 1 and (aside[0] / "state.sqlite").read_bytes() == saved
    assert any(e.get("event", "").startswith("the saved state was moved aside")
               for e in fresh.events())
    assert fresh.stop() == 0
