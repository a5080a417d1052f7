"""How a process reuses host memory: glibc's malloc settings and transparent huge pages.

Large tensors (above glibc's mmap threshold, at most 32 MiB) are mapped fresh from the
kernel on every allocation and unmapped when freed, so each new one is faulted in and zeroed
page by page again. Two kinds of work here allocate the same large buffers over and over:

* featurize workers: each file's STFT buffers, megabytes (``for_feature_workers``);
* CPU training with a full backward then ``opt.step()`` (under DDP): every weight gradient
  of every step, the size of the model (451 M parameters: 1.8 GB per step). Measured on a
  2-core CPU at full widths, batch 25: 436,000 page faults and 1.5-2 s of kernel time per
  step with the defaults; about 4,000 faults and 0.4-0.7 s with ``for_cpu_training`` (2 MiB
  pages). A single-process ae-train of a large model (8.4 M trained parameters or more)
  allocates no Linear gradient at all (the step runs in each layer's backward, into one
  reused buffer: aekit.train.faststep.StepInBackward); a smaller one runs the plain step.

Both only touch this process (and the processes it forks afterwards); on anything but
glibc/Linux they do nothing. ``AEKIT_MALLOC=system`` in the environment turns them off.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD = -1  # free memory at the top of the heap kept before giving it back
M_MMAP_THRESHOLD = -3  # allocations at least this large are mapped on their own


def _enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("AEKIT_MALLOC", "") != "system"


def mallopt(settings: dict[int, int]) -> bool:
    """Apply glibc ``mallopt`` settings to this process; False where that is not possible
    (not Linux, not glibc, or turned off by AEKIT_MALLOC=system)."""
    if not _enabled():
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return all(fn(param, value) == 1 for param, value in settings.items())


def for_feature_workers() -> bool:
    """In a featurize worker: let glibc keep freed memory for the next file instead of
    handing it back and faulting it in again (each STFT's buffers are above the default
    mmap threshold). Memory stays flat: the same buffers are reused file after file."""
    return mallopt({M_MMAP_THRESHOLD: 32 << 20,  # glibc's largest
                    M_TRIM_THRESHOLD: 64 << 20})


def for_cpu_training() -> bool:
    """Before a model is trained on the CPU: torch's large allocations advised as 2 MiB
    pages (``THP_MEM_ALLOC_ENABLE``, which torch reads at its first CPU allocation in the
    process: set here only if the caller has not set it; where torch has already allocated,
    it stays as it was). Each step's gradients are still allocated afresh, but faulted in
    512 times fewer pieces. True where the setting was made or found.

    Not done: serving every allocation from glibc's heap (M_MMAP_MAX 0, no trimming), which
    removed the faults altogether in one measurement; glibc cannot reuse a freed block for
    an aligned allocation of the same size (posix_memalign asks for more), so the heap grew
    with the steps (measured: 2 GB for at most 0.6 GB alive), a leak in a long run."""
    if not _enabled():
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    return os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
