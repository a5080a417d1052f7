"""ae-featurize as a function: audio files -> one features file, written in blocks, atomically.

The files are decoded and their features computed by the worker processes of
:mod:`aekit.audio.featurize` (``iter_tasks``: results in input order); this module keeps the
failure policy (:mod:`aekit.system.failpolicy`), and writes the results block by block into a
features file (:class:`aekit.data.store.FeatureWriter`), so memory stays flat whatever the
number of files. No output is left when the run fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from aekit.audio.featurize import available_cpus, iter_tasks, make_tasks, shard_indices
from aekit.audio.params import ClipParams
from aekit.audio.workers import stall_limit
from aekit.data.store import PER_CLIP, FeatureWriter
from aekit.data.integrity import inputs_fingerprint
from aekit.errors import DataError, InputError
from aekit.system.failpolicy import DEFAULT_MAX_FAIL_FRAC, ON_ERROR, FailPolicy
from aekit.system.fileio import atomic_path


@dataclass
class FeaturizeReport:
    total: int
    written: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    channels_cut: int = 0
    truncated: list[str] = field(default_factory=list)  # files whose body was cut short
    padded_clips: int = 0  # clips shorter than num_samples (zero-padded to it)
    padded_samples: int = 0  # the zeros appended, all clips together (per channel)
    clip_samples: int = 0  # num_samples: the length each written clip has

    @property
    def padded_share(self) -> float:
        """The share of all written samples that are padding (0 when nothing was written)."""
        whole = self.written * self.clip_samples
        return self.padded_samples / whole if whole else 0.0


def featurize(paths: Sequence[os.PathLike | str], ids: Sequence[str], output: os.PathLike | str,
              params: ClipParams, *, jobs: int | None = None, block_size: int = 64,
              on_error: str = ON_ERROR[0], max_fail_frac: float = DEFAULT_MAX_FAIL_FRAC,
              shard: tuple[int, int] = (0, 1), command: str = "",
              on_failure: Callable[[str, str], None] | None = None,
              progress: Callable[[int], None] | None = None,
              stall_timeout: float | None = None) -> FeaturizeReport:
    """Featurize ``paths`` (shard ``shard`` of them) into the HDF5 file ``output``, atomically.

    ``ids`` are the keys stored for each path (same length as ``paths``). Raises
    DataError when more than ``max_fail_frac`` of the inputs fail, when nothing could be
    featurized, or at the first failure with ``on_error='fail'``; no output is left then.
    Worker processes are watched as :func:`iter_features` says (``stall_timeout``).
    """
    if len(paths) != len(ids):
        raise ValueError("paths and ids differ in length")
    if len(set(ids)) != len(ids):
        raise InputError("ids are not unique")
    policy = FailPolicy(on_error, max_fail_frac)  # aekit.system.failpolicy: checked here
    jobs = max(1, int(jobs or available_cpus()))
    stall = stall_limit(stall_timeout)
    block_size = max(1, int(block_size))
    sel = shard_indices(len(paths), shard)
    work = [(int(i), str(paths[i])) for i in sel]
    total = len(work)
    tasks = make_tasks(work, jobs)
    report = FeaturizeReport(total, 0, clip_samples=params.num_samples)
    params.check()  # e.g. empty Mel filters: refused before any work
    extra = {"num_inputs": len(paths), "inputs_sha256": inputs_fingerprint(paths, ids),
             "shard_index": shard[0], "shard_count": shard[1]}

    with atomic_path(output) as tmp:
        writer = FeatureWriter(tmp, {**params.to_attrs(), "kind": params.kind},
                               params.clip_shape, command=command,
                               extra_attrs=extra, expected=total)
        try:
            _run(tasks, params, jobs, block_size, policy, writer, report, ids,
                 on_failure, progress, stall)
            policy.check(total, "; no output written")
            if report.written == 0:
                raise DataError("no input could be featurized; no output written")
            writer.close()
        finally:
            writer.abort()
    return report


def _run(tasks, params, jobs, block_size, policy, writer, report, ids, on_failure, progress,
         stall=None):
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

    for item in iter_tasks(tasks, params, jobs, stall):
        if item.error is not None:
            report.failures.append((item.path, item.error))
            writer.add_failures([item.path], [item.error])
            if on_failure:
                on_failure(item.path, item.error)
            policy.failure(item.path, item.error, "; no output written")
        else:
            buf_feats.append(item.features)
            buf_rows.append((item.index, item.path, item.meta[:5]))
            report.channels_cut += int(item.meta[5])
            short = params.num_samples - int(item.meta[3])  # meta[3]: valid_samples
            if short > 0:
                report.padded_clips += 1
                report.padded_samples += short
            if item.meta[4]:
                report.truncated.append(item.path)
        if progress:
            progress(1)
        if len(buf_rows) >= block_size:
            flush()
    flush()
