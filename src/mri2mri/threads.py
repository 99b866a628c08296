"""How PyTorch's CPU threads wait for each other, chosen before torch is loaded.

PyTorch's CPU kernels run on an OpenMP thread pool (GNU libgomp in the Linux wheels). A thread
that reaches the end of a parallel region before its siblings, or waits for the next region,
spins round a pause loop before it sleeps: 300,000 times by default, milliseconds on today's
cores. On a machine of its own that makes the next region start at once. On a machine shared
with another busy process a sibling often waits for a core, and the spinning thread keeps a
core busy doing nothing: a 2-core training step beside one busy process ran at a third of its
speed alone, where a fair share of the cores would give about half.

:func:`apply_thread_policy` looks before it chooses. It measures how many cores other
processes keep busy (``/proc/stat`` less this process's own CPU time, over a fifth of a second):
on free cores it leaves OpenMP's defaults alone, whose long spin is the fastest there; beside busy
processes it runs on the cores that are left (OMP_NUM_THREADS, at least one) and shortens the spin
to :data:`SPIN_COUNT` iterations (GOMP_SPINCOUNT), so a waiting thread gives its core up quickly.
With one thread per free core a thread rarely waits for a sibling that waits for a core.
libgomp reads its environment once, when torch loads it, so the ``mri2mri`` command applies the
policy first thing, before anything imports torch; called after that, it changes nothing and
says so. The choice holds for the whole process: a run's thread count never changes under it
(so its arithmetic, and an exact resume, do not depend on when other work came and went).
Whatever the user has set (OMP_WAIT_POLICY, GOMP_SPINCOUNT, OMP_NUM_THREADS, KMP_BLOCKTIME) is
left as it is.

This module imports nothing but the standard library, so that the ONNX route of predict stays
free of PyTorch.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field

# Spin iterations before a waiting OpenMP thread sleeps (libgomp's default: 300,000; 0 when
# OMP_WAIT_POLICY=PASSIVE): about 35 us on a 2-core EPYC, where the median gap between the
# operators of a training step is 9 us. Beside busy processes 1,000 and 3,000 ran as fast as
# PASSIVE and 10,000 up to a third slower (benchmarks/bench_contention.py; README "Speed").
SPIN_COUNT = 1_000

# Other processes keeping at least this many cores busy make the machine "busy".
BUSY_CORES = 0.5
PROBE_SECONDS = 0.2

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
    busy_cores: float | None = None  # cores other processes kept busy when it was chosen

    def describe(self) -> str:
        """One phrase for ``train``'s first line, e.g. ``OMP_NUM_THREADS=1 GOMP_SPINCOUNT=1000
        (mri2mri's choice: 1.0 cores busy with other work)``."""
        parts = []
        seen = "" if self.busy_cores is None else f": {self.busy_cores:.1f} cores busy with other work"
        if self.chosen:
            parts.append(" ".join(f"{k}={v}" for k, v in self.chosen.items()) + f" (mri2mri's choice{seen})")
        elif self.busy_cores is not None and not self.user and not self.too_late:
            return f"OpenMP defaults (mri2mri's choice{seen})"
        if self.user:
            parts.append(" ".join(f"{k}={v}" for k, v in self.user.items()) + " (your environment)")
        if self.too_late:
            parts.append("OpenMP defaults (torch was loaded before mri2mri could set its thread policy)")
        return ", ".join(parts) or "OpenMP defaults"


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for(busy_cores: float, cores: int | None = None) -> int:
    """One thread per core that other processes leave free, and at least one."""
    cores = cpu_count() if cores is None else cores
    return max(1, min(cores, round(cores - busy_cores)))


class CpuMeter:
    """Cores kept busy by *other* processes between two readings: the machine's busy time
    (``/proc/stat``) less this process's own CPU time. Linux only; elsewhere it reads None."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            import resource  # POSIX only, like /proc/stat

            with open("/proc/stat", encoding="ascii") as handle:
                fields = [float(x) for x in handle.readline().split()[1:]]
        except (ImportError, OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (sum(fields) - idle) / ticks, usage.ru_utime + usage.ru_stime, time.monotonic()

    def busy_cores(self) -> float | None:
        """Other processes' busy cores since the previous call (or since this meter was made)."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[2] <= last[2]:
            return None
        others = (now[0] - last[0]) - (now[1] - last[1])
        return max(0.0, others / (now[2] - last[2]))


def probe_busy_cores(seconds: float = PROBE_SECONDS) -> float | None:
    """Cores other processes keep busy now, measured over ``seconds``."""
    meter = CpuMeter()
    time.sleep(seconds)
    return meter.busy_cores()


def choose_thread_policy(environ: MutableMapping[str, str], busy_cores: float | None = None) -> ThreadPolicy:
    """The policy for an environment and a machine whose other processes keep ``busy_cores``
    cores busy (None: not measured, treated as free), without changing anything: the user's
    variables win."""
    user = {name: environ[name] for name in (*USER_WAIT_VARIABLES, *USER_THREAD_VARIABLES) if name in environ}
    chosen = {}
    if busy_cores is not None and busy_cores >= BUSY_CORES:
        if "OMP_NUM_THREADS" not in environ:
            chosen["OMP_NUM_THREADS"] = str(threads_for(busy_cores))
        if not any(name in environ for name in USER_WAIT_VARIABLES):
            chosen["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return ThreadPolicy(chosen=chosen, user=user, busy_cores=busy_cores)


_applied: ThreadPolicy | None = None


def apply_thread_policy(
    environ: MutableMapping[str, str] | None = None, busy_cores: float | None = None
) -> ThreadPolicy:
    """Set the chosen variables in ``environ`` (the process's by default) unless torch is loaded.

    ``busy_cores`` is measured (:func:`probe_busy_cores`) when not given, unless the user has set
    every variable the policy could choose. Called at the start of the ``mri2mri`` command; the
    policy is then what :func:`thread_policy` reports.
    """
    global _applied
    environ = os.environ if environ is None else environ
    if sys.modules.get("torch") is not None:
        # The OpenMP runtime has read its environment already; setting it now would only mislead.
        policy = choose_thread_policy(environ)
        policy = ThreadPolicy(user=policy.user, too_late=True)
    else:
        decided = "OMP_NUM_THREADS" in environ and any(name in environ for name in USER_WAIT_VARIABLES)
        if busy_cores is None and not decided:
            busy_cores = probe_busy_cores()
        policy = choose_thread_policy(environ, busy_cores)
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

