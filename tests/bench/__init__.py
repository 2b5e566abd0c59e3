"""Tests of the benchmark scripts in ``bench/`` (their plumbing, never their timings)."""
