"""Quota-policy experiments: policies, a discrete-event engine on the real model, results.

``load_policy`` reads and checks a policy file (``PolicyError`` otherwise); ``run_policies``
runs policies' replications (here or on Dask) and returns the result objects; ``Engine`` and
``run_replication`` run one replication. See ``docs/experiments.md``.
"""

from ioasidsd.experiments.engine import Engine, Replication, run_replication
from ioasidsd.experiments.errors import PolicyError
from ioasidsd.experiments.policy import Policy, Workload, load_policy, parse_policy
from ioasidsd.experiments.runner import run_policies

__all__ = [
    "Engine",
    "Policy",
    "PolicyError",
    "Replication",
    "Workload",
    "load_policy",
    "parse_policy",
    "run_policies",
    "run_replication",
]
