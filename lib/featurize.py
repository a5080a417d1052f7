"""Audio files -> one features file: decode and compute in worker processes, write in blocks.

Work is cut into tasks of up to 32 files that shrink towards the end; each worker process
(one torch thread) decodes a group of its files into a buffer it reuses (ClipReader), then
computes their features with one reusable MelFrontend into one array per task; the parent
(which warms up with one torch thread, so no OpenMP pool spins beside the workers) keeps a
few tasks per worker in flight and writes results in input order, block by block, so memory
stays flat whatever the number of files. Failures are recorded and skipped, or stop the run,
as asked.
"""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing as mp
import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, Sequence

import numpy as np

from . import hostmem
from .audio import AudioError, ClipReader
from .errors import DataError, InputError
from .features import MelFrontend, MelParams, check_mel_params
from .fileio import atomic_path
from .store import PER_CLIP, FeatureWriter, inputs_fingerprint

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


def _worker_state(frontend: MelFrontend) -> dict:
    p = frontend.params
    return {"params": p, "frontend": frontend,
            "reader": ClipReader(p.sample_rate, p.num_samples, p.channels, p.channel_policy)}


def _init_worker(frontend: MelFrontend, threads: int, own_process: bool = False) -> None:
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
    frontend: MelFrontend = state["frontend"]
    reader: ClipReader = state["reader"]
    p = frontend.params
    group = state.setdefault("group", np.empty((_group_files(p), p.channels, p.num_samples),
                                               dtype=np.float32))
    decoded, failed = [], []  # decoded: (index, path, meta) of the clips in ``group``
    rows = []
    feats_out = np.empty((len(task), *p.clip_shape), dtype=np.float32)

    def featurize_group() -> None:
        with torch.inference_mode():
            for k, (index, path, meta) in enumerate(decoded):
                dst = feats_out[len(rows)]
                dst[...] = frontend(torch.from_numpy(group[k])).numpy()  # [C, M, T]
                if not np.isfinite(dst.sum(dtype=np.float64)):  # power overflowing float32
                    failed.append((index, path, "features are not finite (sample values too "
                                                "large: a corrupt float file?)"))
                    continue
                rows.append((index, path, meta))
        decoded.clear()

    for index, path in task:
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


def _group_files(params: MelParams) -> int:
    """Files decoded ahead per group: as many as DECODE_AHEAD_BYTES of samples hold (>= 1)."""
    per_file = 4 * params.channels * params.num_samples
    return max(1, min(TASK_FILES, DECODE_AHEAD_BYTES // per_file))


# ------------------------------------------------------------------ parent side

@dataclass
class FeaturizeReport:
    total: int
    written: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    channels_cut: int = 0
    truncated: list[str] = field(default_factory=list)  # files whose body was cut short


def featurize(paths: Sequence[os.PathLike | str], ids: Sequence[str], output: os.PathLike | str,
              params: MelParams, *, jobs: int | None = None, block_size: int = 64,
              on_error: str = "skip", max_fail_frac: float = 0.05,
              shard: tuple[int, int] = (0, 1), command: str = "",
              on_failure: Callable[[str, str], None] | None = None,
              progress: Callable[[int], None] | None = None) -> FeaturizeReport:
    """Featurize ``paths`` (shard ``shard`` of them) into the HDF5 file ``output``, atomically.

    ``ids`` are the keys stored for each path (same length as ``paths``). Raises
    DataError when more than ``max_fail_frac`` of the inputs fail, when nothing could be
    featurized, or at the first failure with ``on_error='fail'``; no output is left then.
    """
    if len(paths) != len(ids):
        raise ValueError("paths and ids differ in length")
    if len(set(ids)) != len(ids):
        raise InputError("ids are not unique")
    if on_error not in ("skip", "fail"):
        raise InputError("on-error must be 'skip' or 'fail'")
    if not 0.0 <= max_fail_frac <= 1.0:
        raise InputError("max-fail-frac must be between 0 and 1")
    jobs = max(1, int(jobs or available_cpus()))
    block_size = max(1, int(block_size))
    sel = shard_indices(len(paths), shard)
    work = [(int(i), str(paths[i])) for i in sel]
    total = len(work)
    tasks = make_tasks(work, jobs)
    report = FeaturizeReport(total, 0)
    check_mel_params(params)  # empty Mel filters: refused before any work
    extra = {"num_inputs": len(paths), "inputs_sha256": inputs_fingerprint(paths, ids),
             "shard_index": shard[0], "shard_count": shard[1]}

    with atomic_path(output) as tmp:
        writer = FeatureWriter(tmp, params.to_attrs(), params.clip_shape, command=command,
                               extra_attrs=extra, expected=total)
        try:
            _run(tasks, params, jobs, block_size, on_error, writer, report, ids,
                 on_failure, progress)
            n_failed = len(report.failures)
            if total and n_failed / total > max_fail_frac:
                raise DataError(f"{n_failed} of {total} inputs failed ({100 * n_failed / total:.1f}% "
                                f"> --max-fail-frac {max_fail_frac:g}); no output written")
            if report.written == 0:
                raise DataError("no input could be featurized; no output written")
            writer.close()
        finally:
            writer.abort()
    return report


def _run(tasks, params, jobs, block_size, on_error, writer, report, ids, on_failure, progress):
    buf_feats: list[np.ndarray] = []
    buf_rows: list[tuple[int, str, tuple]] = []  # (input index, path, per-clip meta)

    def flush() -> None:
        if not buf_rows:
            return
        meta = {name: [m[k] for _, _, m in buf_rows] for k, name in enumerate(PER_CLIP)}
        writer.append(np.stack(buf_feats), [ids[i] for i, _, _ in buf_rows],
                      [p for _, p, _ in buf_rows], meta)
        report.written += len(buf_rows)
        buf_feats.clear()
        buf_rows.clear()

    for item in _iter_tasks(tasks, params, jobs):
        if item.error is not None:
            report.failures.append((item.path, item.error))
            writer.add_failures([item.path], [item.error])
            if on_failure:
                on_failure(item.path, item.error)
            if on_error == "fail":
                raise DataError(f"{item.path}: {item.error} (stopping: --on-error fail); "
                                "no output written")
        else:
            buf_feats.append(item.features)
            buf_rows.append((item.index, item.path, item.meta[:5]))
            report.channels_cut += int(item.meta[5])
            if item.meta[4]:
                report.truncated.append(item.path)
        if progress:
            progress(1)
        if len(buf_rows) >= block_size:
            flush()
    flush()


# ------------------------------------------------------------------ shared iterator

class Featurized(NamedTuple):
    """One input's result: features float32 [C, M, T] and per-clip meta (PER_CLIP order, then
    channels_cut), or ``features=None`` and the one-line reason in ``error``."""

    index: int  # position in the input list
    path: str
    features: np.ndarray | None
    meta: tuple | None
    error: str | None


def iter_features(paths: Sequence[os.PathLike | str], params: MelParams,
                  jobs: int | None = None) -> Iterator[Featurized]:
    """Decode and featurize ``paths`` in worker processes; yield one :class:`Featurized` per
    path, in input order, as results arrive. Failures are yielded, not raised.

    At most a few tasks per worker are in flight, so memory stays flat however slowly the
    caller consumes (``featurize`` writes blocks, ``aekit.scoring`` runs a model). Closing
    the generator early stops the workers.
    """
    check_mel_params(params)
    work = [(i, str(p)) for i, p in enumerate(paths)]
    jobs = max(1, int(jobs or available_cpus()))
    yield from _iter_tasks(make_tasks(work, jobs), params, jobs)


def _result(pool, pending, workers: set):
    """The result of one task; DataError if a worker process died meanwhile. (A Pool
    replaces a dead worker and never delivers the task it held: without this check a worker
    killed by the OOM killer, or crashing in a decoder, would leave the caller waiting forever.)
    ``workers`` collects every worker process seen, replacements included."""
    import signal

    while True:
        try:
            return pending.get(timeout=0.5)
        except mp.TimeoutError:
            workers.update(pool._pool)  # the pool's current processes
            dead = next((w for w in workers if w.exitcode is not None), None)
            if dead is not None:
                code = dead.exitcode
                how = (f"killed by {signal.Signals(-code).name}" if code < 0
                       and -code in signal.Signals._value2member_map_ else f"exit status {code}")
                raise DataError(f"a worker process died ({how}; out of memory?); "
                                "no output written")


def _start_pool(n: int, frontend: MelFrontend):
    # fork is cheapest (workers inherit the imports and the frontend); on macOS, where
    # forking a process with threads is unsafe, and elsewhere, spawn.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    gc.freeze()  # forked workers' collections then leave the parent's objects (pages) alone
    try:
        return ctx.Pool(n, initializer=_init_worker, initargs=(frontend, 1, True))
    finally:
        gc.unfreeze()


def _iter_tasks(tasks: list[list[tuple[int, str]]], params: MelParams,
                jobs: int) -> Iterator[Featurized]:
    def items(result) -> list[Featurized]:
        ok, feats, failed = result
        out = [Featurized(i, p, feats[k], m, None) for k, (i, p, m) in enumerate(ok)]
        out += [Featurized(i, p, None, None, r) for i, p, r in failed]
        return sorted(out, key=lambda it: it.index)

    import torch

    _preload()
    serial = jobs == 1 or len(tasks) <= 1
    threads = torch.get_num_threads()
    # The warm-up runs with one torch thread: the parent then starts no OpenMP pool that
    # would spin beside the workers, nor one that forked workers would inherit (measured:
    # 72 ms CPU -> 12 ms). The caller's thread count is restored before the first result.
    torch.set_num_threads(1)
    try:
        frontend = MelFrontend(params)  # built once, here; workers get a copy
        frontend.warm_up()  # first-call setup done once, inherited by forked workers
        pool = None if serial else _start_pool(min(jobs, len(tasks)), frontend)
    finally:
        torch.set_num_threads(threads)
    if pool is None:  # in this process, with state of its own (not the workers' global)
        state = _worker_state(frontend)
        for task in tasks:
            yield from items(_process(task, state))
        return
    window = IN_FLIGHT_PER_JOB * min(jobs, len(tasks))
    with pool:
        try:
            pending: deque = deque()
            todo = iter(tasks)
            for task in itertools.islice(todo, window):
                pending.append(pool.apply_async(_process, (task,)))
            workers = set(pool._pool)  # the processes started with the pool
            while pending:
                result = _result(pool, pending.popleft(), workers)
                for task in itertools.islice(todo, 1):
                    pending.append(pool.apply_async(_process, (task,)))
                yield from items(result)
        except BaseException:  # an error, Ctrl-C, or the caller closed the generator
            pool.terminate()
            raise
