"""Tests of the daemon: snapshot, store, configuration, process tracking, control API, e2e."""
