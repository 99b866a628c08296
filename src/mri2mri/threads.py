"""How PyTorch's CPU threads wait for each other, chosen before torch is loaded.

PyTorch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the Linux wheels). A thread
that reaches the end of a parallel region before its siblings, or waits for the next region,
spins round a pause loop before it sleeps: 300,000 times by default, milliseconds on today's
cores. On a machine of its own that makes the next region start at once. On a machine shared
with another busy process a sibling often waits for a core, and the spinning thread keeps a
core busy doing nothing: a 2-core training step beside one busy process ran at a third of its
speed alone, where a fair share of the cores would give about half.

:func:`apply_thread_policy` shortens the spin to :data:`SPIN_COUNT` iterations (GOMP_SPINCOUNT):
long enough to bridge the gaps between the operators of a step when the cores are free, short
enough to give a core up quickly when they are not (benchmarks/bench_contention.py measures
it). libgomp reads its environment once, when torch loads it, so the ``mri2mri`` command applies
the policy first thing, before anything imports torch; called after that, it changes nothing
and says so. Whatever the user has set (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS,
KMP_BLOCKTIME) is left as it is.

This module imports nothing but the standard library, so that the ONNX route of predict stays
free of PyTorch.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field

# Spin iterations before a waiting OpenMP thread sleeps (libgomp's default: 300,000; 0 when
# OMP_WAIT_POLICY=PASSIVE): about 35 us on a 2-core EPYC, where the median gap between the
# operators of a training step is 9 us. Beside busy processes 1,000 and 3,000 ran as fast as
# PASSIVE and 10,000 up to a third slower (benchmarks/bench_contention.py; README "Speed").
SPIN_COUNT = 1_000

# A user who sets any of these decides how the threads wait: nothing is added.
USER_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# The user's thread count is kept (and reported); the wait policy is still set.
USER_THREAD_VARIABLES = ("OMP_NUM_THREADS",)


@dataclass(frozen=True)
class ThreadPolicy:
    """What decides how the CPU threads wait: the variables set here, the user's own, or neither."""

    chosen: dict[str, str] = field(default_factory=dict)  # set by mri2mri
    user: dict[str, str] = field(default_factory=dict)  # set by the user, left alone
    too_late: bool = False  # torch was loaded before the policy could be applied

    def describe(self) -> str:
        """One phrase for ``train``'s first line, e.g. ``GOMP_SPINCOUNT=10000 (mri2mri's choice)``."""
        parts = []
        if self.chosen:
            parts.append(" ".join(f"{k}={v}" for k, v in self.chosen.items()) + " (mri2mri's choice)")
        if self.user:
            parts.append(" ".join(f"{k}={v}" for k, v in self.user.items()) + " (your environment)")
        if self.too_late:
            parts.append("OpenMP defaults (torch was loaded before mri2mri could set its thread policy)")
        return ", ".join(parts) or "OpenMP defaults"


def choose_thread_policy(environ: MutableMapping[str, str]) -> ThreadPolicy:
    """The policy for an environment, without changing it: the user's variables win."""
    user = {name: environ[name] for name in (*USER_WAIT_VARIABLES, *USER_THREAD_VARIABLES) if name in environ}
    chosen = {}
    if not any(name in environ for name in USER_WAIT_VARIABLES):
        chosen["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return ThreadPolicy(chosen=chosen, user=user)


_applied: ThreadPolicy | None = None


def apply_thread_policy(environ: MutableMapping[str, str] | None = None) -> ThreadPolicy:
    """Set the chosen variables in ``environ`` (the process's by default) unless torch is loaded.

    Called at the start of the ``mri2mri`` command; the policy is then what
    :func:`thread_policy` reports.
    """
    global _applied
    environ = os.environ if environ is None else environ
    policy = choose_thread_policy(environ)
    if sys.modules.get("torch") is not None and policy.chosen:
        # The OpenMP runtime has read its environment already; setting it now would only mislead.
        policy = ThreadPolicy(user=policy.user, too_late=True)
    environ.update(policy.chosen)
    if environ is os.environ:
        _applied = policy
    return policy


def thread_policy() -> ThreadPolicy:
    """The policy in force in this process: the one applied, else the environment's own."""
    if _applied is not None:
        return _applied
    policy = choose_thread_policy(os.environ)
    return ThreadPolicy(user=policy.user)
