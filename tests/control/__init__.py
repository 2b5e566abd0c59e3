"""Tests of the control API: server, client, verbs, visibility."""
