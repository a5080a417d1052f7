"""Threads per process when several training processes share one machine.

torch's default is one thread per core of the whole machine. N processes started at once
(``make -jN`` over machine types, a SLURM job with several tasks per node, a shell loop with
``&``) then run N x cores threads on the cores: each of them spins at its barriers while the
others hold the cores, and on a busy 2-core machine a frames training step took 70x longer
with 2 threads than with 1 (4.5 s against 64 ms, measured here with 16 runnable processes).

``auto_threads`` chooses, in this order:

1. ``AEKIT_THREADS`` (a positive integer), as ``ae-train --threads`` does;
2. else the cores this process may use: ``SLURM_CPUS_PER_TASK`` when set, and the process's
   CPU affinity (``taskset``, cgroups' cpusets, SLURM's binding), the smaller of them;
   divided by the number of jobs run at once when it is known: ``AEKIT_JOBS`` (a positive
   integer), else GNU make's ``-jN`` in ``MAKEFLAGS`` (a bare ``-j``, no limit: one thread
   each), rounded down, at least 1; ``apply_threads`` keeps it at most torch's default (one
   thread per physical core: no more threads than before on hyper-threaded cores).

Nothing here imports torch; ``apply_threads`` sets torch's intra-op threads.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

from aekit.errors import InputError

_JOBS = re.compile(r"(?:^|\s)(?:-j|--jobs(?:=|\s+))(\d*)(?=\s|$)")


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise InputError(f"{name}={raw!r}: must be a positive integer")
    return n


def make_jobs(makeflags: str | None) -> int | None:
    """The jobs GNU make runs at once from its MAKEFLAGS: N for -jN, 0 for a bare -j (no
    limit), None when make runs one job at a time or the flags do not say."""
    if not makeflags:
        return None
    m = None
    for m in _JOBS.finditer(makeflags):
        pass  # the last -j wins, as in make
    if m is None:
        return None
    n = int(m.group(1)) if m.group(1) else 0
    return None if n == 1 else n


def available_cores(env: Mapping[str, str] | None = None) -> int:
    """Cores this process may use: its CPU affinity and SLURM_CPUS_PER_TASK, the smaller."""
    env = os.environ if env is None else env
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        cores = min(cores, int(slurm))
    return max(1, cores)


def auto_threads(env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """(threads, why) for one of possibly several processes on this machine."""
    env = os.environ if env is None else env
    explicit = _positive(env, "AEKIT_THREADS")
    if explicit is not None:
        return explicit, "AEKIT_THREADS"
    cores = available_cores(env)
    jobs = _positive(env, "AEKIT_JOBS")
    source = "AEKIT_JOBS"
    if jobs is None:
        jobs, source = make_jobs(env.get("MAKEFLAGS")), "make -j"
        if jobs == 0:  # make -j without a limit: as many jobs as cores, at most
            jobs = cores
    if not jobs or jobs == 1:
        return cores, f"{cores} available cores"
    return max(1, cores // jobs), f"{cores} available cores / {jobs} jobs ({source})"


_TORCH_DEFAULT: list[int] = []  # torch's own thread count, seen before the first change


def physical_cores() -> int | None:
    """Physical cores among the CPUs this process may use (torch's own default thread count
    is one per physical core), from /sys; None where the topology cannot be read. Read from
    the machine, not from torch, so that it does not depend on what this process set before
    (an ae-train run in the same process, a test)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        cores = set()
        for c in cpus:
            base = f"/sys/devices/system/cpu/cpu{c}/topology/"
            with open(base + "core_id") as f1, open(base + "physical_package_id") as f2:
                cores.add((f1.read().strip(), f2.read().strip()))
    except (AttributeError, OSError):
        return None
    return len(cores) or None


def apply_threads(threads: int | None = None) -> tuple[int, str]:
    """Set torch's intra-op threads: ``threads`` when given, else ``auto_threads()``, at
    most one per physical core (torch's own default) unless AEKIT_THREADS set it."""
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(physical_cores() or torch.get_num_threads())
    if threads is not None:
        if threads < 1:
            raise InputError(f"must be at least 1, got {threads}", param="threads")
        n, why = threads, "given"
    else:
        n, why = auto_threads()
        if why != "AEKIT_THREADS" and n > _TORCH_DEFAULT[0]:
            n, why = _TORCH_DEFAULT[0], f"one per physical core, at most {why}"
    torch.set_num_threads(n)
    return n, why
