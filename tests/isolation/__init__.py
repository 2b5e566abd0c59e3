"""The daemon against a hostile local user: a real unprivileged user with a delegated cgroup."""
