"""Helpers shared by the benchmarks: timing, peak RSS, a matmul peak, result files."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def best_of(fn, repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (the least disturbed run on a shared machine)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended:
    a pool's workers are counted once they are joined."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def current_rss_mib() -> float:
    """Resident set size of this process now (MiB; Linux, else the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def matmul_peak_gflops(n: int = 2048, repeat: int = 5, dtype=None) -> float:
    """Achieved GFLOP/s of a square fp32 (or ``dtype``) matmul with all threads: the CPU's
    practical dense-compute ceiling, measured in the same run as what it is compared to."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm up
    t = best_of(lambda: torch.mm(a, b), repeat)
    return 2 * n**3 / t / 1e9


def matmul_peak(dtype_name: str = "float32", seconds: float = 3.0, device: str = "cpu") -> float:
    """GFLOP/s of a large square matmul on ``device`` (2048^3 on the CPU, 8192^3 on a GPU),
    repeated for ``seconds``: the device's practical ceiling for this dtype."""
    import torch

    dev = torch.device(device)
    dtype = getattr(torch, dtype_name)
    n = 2048 if dev.type == "cpu" else 8192
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda *_: None)
    a @ b
    sync(dev)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def save(name: str, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


def table(rows: list[tuple], header: tuple) -> str:
    cols = list(zip(header, *rows))
    widths = [max(len(str(x)) for x in c) for c in cols]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines)
