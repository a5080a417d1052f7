"""Audio files -> features arrays: decode and compute in worker processes, in input order.

Work is cut into tasks of up to 32 files that shrink towards the end; each worker process
(one torch thread) decodes a group of its files into a buffer it reuses (ClipReader), then
computes their features with one reusable front end (the kind's) into one array per task; the parent
(which warms up with one torch thread, so no OpenMP pool spins beside the workers) keeps a
few tasks per worker in flight and writes results in input order, block by block, so memory
stays flat whatever the number of files. Failures are recorded and skipped, or stop the run,
as asked.
"""

from __future__ import annotations

import logging
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from aekit.system import hostmem
from aekit.audio.decode import AudioError, ClipReader
from aekit.errors import InputError
from aekit.audio.params import ClipParams
from aekit.audio.workers import WorkerPool, exit_with_parent, stall_limit

LOG = logging.getLogger("aekit")

TASK_FILES = 32  # most files per task: few enough that results stream back in order without stalls
IN_FLIGHT_PER_JOB = 2  # tasks queued per worker: keeps workers busy, bounds results held
DECODE_AHEAD_BYTES = 32 << 20  # samples decoded before featurizing them, per worker


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


#: The most shards one run may be cut into (far more than any job array holds).
MAX_SHARDS = 1_000_000


def parse_shard(spec: str | None) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N <= MAX_SHARDS; None -> (0, 1)."""
    if spec is None:
        return 0, 1
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InputError(f"bad shard {spec!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"bad shard {spec!r}: need 0 <= I < N")
    if n > MAX_SHARDS:
        raise InputError(f"bad shard {spec!r}: at most {MAX_SHARDS:,} shards")
    return i, n


def shard_indices(n_items: int, shard: tuple[int, int]) -> np.ndarray:
    """The I-th of N contiguous, deterministic parts (numpy.array_split sizes: the first
    n_items % N parts hold one more), computed without building the other parts."""
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise InputError(f"bad shard {i}/{n}: need 0 <= I < N")
    q, r = divmod(n_items, n)
    start = i * q + min(i, r)
    return np.arange(start, start + q + (i < r))


def make_tasks(work: list, jobs: int, most: int | None = None) -> list[list]:
    """Cut ``work`` into consecutive tasks, large first and shrinking towards the end (guided
    scheduling): each holds a quarter of what is left per worker, between 1 and ``most``
    files. Large tasks keep the per-task cost (messages, wake-ups) small on short clips; small
    last ones keep the workers finishing together. Deterministic in len(work) and jobs."""
    most = TASK_FILES if most is None else most
    tasks, s = [], 0
    while s < len(work):
        k = max(1, min(most, (len(work) - s) // (4 * jobs)))
        tasks.append(work[s:s + k])
        s += k
    return tasks


# ------------------------------------------------------------------ worker side

_WORKER: dict = {}  # a worker process's state (set by _init_worker in each worker)


def _worker_state(frontend) -> dict:
    p = frontend.params
    return {"params": p, "frontend": frontend,
            "reader": ClipReader(p.sample_rate, p.num_samples, p.channels, p.channel_policy)}


def _init_worker(frontend, threads: int, own_process: bool = False) -> None:
    import torch

    torch.set_num_threads(threads)
    _WORKER.clear()
    _WORKER.update(_worker_state(frontend))
    if own_process:
        hostmem.for_feature_workers()


def _preload() -> None:
    """Import the decoders in the parent: forked workers inherit them instead of each paying
    the imports (soundfile and soxr) before their first file."""
    import soundfile  # noqa: F401
    import soxr  # noqa: F401


def _process(task: list[tuple[int, str]], state: dict | None = None):
    """Decode and featurize a few files with ``state`` (the in-process path's own) or this
    worker's. Returns (ok rows (index, path, meta), their features [k, C, M, T] as one array
    (one buffer to send back, not k), failures (index, path, reason)), each in task order.

    The files are decoded a group at a time into the worker's group buffer (at most
    DECODE_AHEAD_BYTES of samples), then featurized: the decoder's and the STFT's code and
    tables stay in cache through a run of files instead of evicting each other per file.
    """
    import torch

    state = _WORKER if state is None else state
    frontend = state["frontend"]
    reader: ClipReader = state["reader"]
    p = frontend.params
    group = state.setdefault("group", np.empty((_group_files(p), p.channels, p.num_samples),
                                               dtype=np.float32))
    mark = state.get("mark", _no_mark)  # a worker's progress, for the parent's watchdog
    decoded, failed = [], []  # decoded: (index, path, meta) of the clips in ``group``
    rows = []
    feats_out = np.empty((len(task), *p.clip_shape), dtype=np.float32)

    def featurize_group() -> None:
        with torch.inference_mode():
            for k, (index, path, meta) in enumerate(decoded):
                mark(index)
                dst = feats_out[len(rows)]
                dst[...] = frontend(torch.from_numpy(group[k])).numpy()  # [C, M, T]
                if not np.isfinite(dst.sum(dtype=np.float64)):  # power overflowing float32
                    failed.append((index, path, "features are not finite (sample values too "
                                                "large: a corrupt float file?)"))
                    continue
                rows.append((index, path, meta))
        decoded.clear()

    for index, path in task:
        mark(index)
        try:
            clip = reader.read(path, out=group[len(decoded)])  # decoded into its group slot
        except AudioError as exc:
            failed.append((index, path, str(exc)))
            continue
        decoded.append((index, path, (clip.source_sample_rate, clip.source_channels,
                                      clip.source_frames, clip.valid_samples,
                                      int(clip.truncated), clip.channels_cut)))  # PER_CLIP order
        if len(decoded) == len(group):
            featurize_group()
    featurize_group()
    return rows, feats_out[:len(rows)], failed


def _no_mark(index: int) -> None:
    pass


def _group_files(params: ClipParams) -> int:
    """Files decoded ahead per group: as many as DECODE_AHEAD_BYTES of samples hold (>= 1)."""
    per_file = 4 * params.channels * params.num_samples
    return max(1, min(TASK_FILES, DECODE_AHEAD_BYTES // per_file))


# ------------------------------------------------------------------ shared iterator

class Featurized(NamedTuple):
    """One input's result: features float32 [C, M, T] and per-clip meta (PER_CLIP order, then
    channels_cut), or ``features=None`` and the one-line reason in ``error``."""

    index: int  # position in the input list
    path: str
    features: np.ndarray | None
    meta: tuple | None
    error: str | None


def iter_features(paths: Sequence[os.PathLike | str], params: ClipParams,
                  jobs: int | None = None, *,
                  stall_timeout: float | None = None) -> Iterator[Featurized]:
    """Decode and featurize ``paths`` in worker processes; yield one :class:`Featurized` per
    path, in input order, as results arrive. Failures are yielded, not raised.

    At most a few tasks per worker are in flight, so memory stays flat however slowly the
    caller consumes (``featurize`` writes blocks, ``aekit.evaluate.scoring`` runs a model). Closing
    the generator early (or an error, or Ctrl-C) stops the workers: none outlives the call.

    Never waits forever: a worker that dies fails the call (DataError), and so does a worker
    that makes no progress on one input for ``stall_timeout`` seconds (default
    $AEKIT_STALL_TIMEOUT, else 600; a decoder stuck on a damaged file, a stopped process),
    with one line naming that input. With ``jobs=1`` the work runs in the caller's process
    and has no watchdog.
    """
    params.check()
    work = [(i, str(p)) for i, p in enumerate(paths)]
    jobs = max(1, int(jobs or available_cpus()))
    yield from iter_tasks(make_tasks(work, jobs), params, jobs, stall_timeout)


def _worker_main(slot: int, frontend, tasks, inbox, outbox, progress,
                 parent: int, others: list) -> None:
    """A worker process: take task numbers (or, spawned, tasks) from ``inbox``, one at a
    time, and send back (number, result) or (number, exception) on ``outbox``; stop at None
    or when the parent is gone. Nothing here is shared with another worker (no queue lock
    that a killed worker could leave held): each worker has its own two pipes, and writes
    the input it is working on into its own two slots of ``progress`` (no lock)."""
    import signal

    # Ctrl-C reaches the whole process group: the parent alone handles it (and then stops
    # the workers). SIGTERM/SIGHUP end a worker at once, quietly, whatever its threads do.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)
    exit_with_parent(parent)
    for conn in others:  # forked: the parent's ends of the pipes of the workers before this one
        conn.close()
    code = 0
    try:
        _init_worker(frontend, 1, True)

        def mark(index: int) -> None:
            progress[2 * slot] = index
            progress[2 * slot + 1] += 1

        _WORKER["mark"] = mark
        while True:
            try:
                msg = inbox.recv()
            except (EOFError, OSError):
                break  # the parent is gone or closed the pipe
            if msg is None:
                break
            n, task = msg
            try:
                out = (n, _process(tasks[n] if task is None else task), None)
            except BaseException as exc:  # noqa: BLE001 - sent to the parent, raised there
                out = (n, None, exc)
            try:
                outbox.send(out)
            except (EOFError, OSError):
                break
            except Exception as exc:  # an exception that does not pickle
                outbox.send((n, None, RuntimeError(f"{type(exc).__name__}: {exc}")))
    except BaseException:  # noqa: BLE001 - the parent reports the exit status
        code = 1
    finally:
        os._exit(code)  # no atexit or finalizers of the parent's objects in a worker


class _Workers(WorkerPool):
    """The featurizing workers: :class:`aekit.audio.workers.WorkerPool` running
    :func:`_worker_main` (which calls this module's ``_process``)."""

    target = staticmethod(_worker_main)


def iter_tasks(tasks: list[list[tuple[int, str]]], params: ClipParams,
                jobs: int, stall: float | None = None) -> Iterator[Featurized]:
    def items(result) -> list[Featurized]:
        ok, feats, failed = result
        out = [Featurized(i, p, feats[k], m, None) for k, (i, p, m) in enumerate(ok)]
        out += [Featurized(i, p, None, None, r) for i, p, r in failed]
        return sorted(out, key=lambda it: it.index)

    import torch

    stall = stall_limit(stall)
    _preload()
    serial = jobs == 1 or len(tasks) <= 1
    threads = torch.get_num_threads()
    # The warm-up runs with one torch thread: the parent then starts no OpenMP pool that
    # would spin beside the workers, nor one that forked workers would inherit (measured:
    # 72 ms CPU -> 12 ms). The caller's thread count is restored before the first result.
    torch.set_num_threads(1)
    try:
        frontend = params.frontend()  # built once, here; workers get a copy
        frontend.warm_up()  # first-call setup done once, inherited by forked workers
        pool = None if serial else _Workers(min(jobs, len(tasks)), frontend, tasks, stall)
    finally:
        torch.set_num_threads(threads)
    if pool is None:  # in this process, with state of its own (not the workers' global)
        state = _worker_state(frontend)
        for task in tasks:
            yield from items(_process(task, state))
        return
    window = IN_FLIGHT_PER_JOB * min(jobs, len(tasks))
    ok = False
    try:
        done: dict[int, object] = {}  # results that came before an earlier task's
        sent = 0
        for n in range(len(tasks)):
            while sent < min(len(tasks), n + window):
                pool.submit(sent)
                sent += 1
            if n not in done:
                for m, result in pool.results():
                    done[m] = result
                    if n in done:
                        break
            yield from items(done.pop(n))
            pool.resume()
        ok = True
    finally:  # complete; or an error, Ctrl-C, or the caller closed the generator
        pool.stop(ok)
