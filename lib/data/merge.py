"""ae-merge: the shard files of one sharded ae-featurize run joined into one features file."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from aekit.audio.kinds import params_class
from aekit.data.integrity import (CONTENT_HASH, META_HASH, PER_CLIP, _attr, _content_hasher,
                                  _feed_rows, check_same_inputs)
from aekit.data.store import FeatureFile, FeatureWriter, params_mismatch
from aekit.errors import InputError


def _int_attr(ff: FeatureFile, name: str, default: int) -> int:
    """An integer attribute of a shard (InputError naming it when it is not one)."""
    v = _attr(ff.f.attrs.get(name, default))
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{ff.path}: attribute {name}={v!r} is not an integer; the file is "
                         "damaged or not written by ae-featurize")
    return int(v)


def _ordered_shards(files: list[FeatureFile]) -> list[FeatureFile]:
    """The shards of one sharded run in shard order; InputError when they are not one
    complete set: different parameters (kind included), shapes, runs or input lists, an
    index out of range or given twice, or missing shards."""
    first = files[0]
    ref = first.params
    shape = first.clip_shape
    count = _int_attr(first, "shard_count", 1)
    if count < 1:
        raise InputError(f"{first.path}: shard_count {count} is not positive; "
                         "the file is damaged")
    total_inputs = first.attrs.get("num_inputs")
    check_same_inputs(files)
    seen: dict[int, FeatureFile] = {}
    for ff in files:
        diffs = params_mismatch(ref, ff.params)
        if diffs:
            raise InputError(f"{ff.path} was made with different parameters than "
                             f"{first.path}: {'; '.join(diffs)}")
        if ff.clip_shape != shape:
            raise InputError(f"{ff.path}: clip shape {ff.clip_shape} differs from {shape}")
        a = ff.attrs
        if _int_attr(ff, "shard_count", 1) != count or a.get("num_inputs") != total_inputs:
            raise InputError(f"{ff.path} belongs to a different sharded run "
                             f"(shard_count {a.get('shard_count')}, num_inputs {a.get('num_inputs')}) "
                             f"than {first.path} (shard_count {count}, num_inputs {total_inputs})")
        i = _int_attr(ff, "shard_index", 0)
        if not 0 <= i < count:
            raise InputError(f"{ff.path}: shard_index {i} is outside 0..{count - 1} "
                             f"(shard_count {count}); the file is damaged")
        if i in seen:
            raise InputError(f"shard {i}/{count} given twice: {seen[i].path} and {ff.path}")
        seen[i] = ff
    if len(seen) != count:  # every index seen is in 0..count-1: some are missing
        missing: list[int] = []
        for i in range(count):  # stops after 5: at most len(files) + 5 steps
            if i not in seen:
                missing.append(i)
                if len(missing) == 5:
                    break
        more = count - len(seen) - len(missing)
        raise InputError("incomplete set of shards: missing "
                         + ", ".join(f"{i}/{count}" for i in missing)
                         + (f" (and {more} more)" if more else ""))
    ordered = [seen[i] for i in range(count)]
    return ordered


def merge_shards(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
                 command: str = "", block: int = 256) -> int:
    """Join the shard files of one ``ae-featurize --shard I/N`` job into one file.

    The result holds the same rows, in the same order, with the same per-clip data and
    failure records as a single unsharded run. Refuses shards made with different
    parameters, from a different input list, or an incomplete or repeated set of shards.
    Returns the number of clips written.
    """
    from aekit.system.fileio import atomic_path

    if not inputs:
        raise InputError("no shard files given")
    files = [FeatureFile(p) for p in inputs]
    try:
        ordered = _ordered_shards(files)
        first, shape = files[0], files[0].clip_shape  # the first given, as before
        all_ids = [x for ff in ordered for x in ff.ids]
        if len(set(all_ids)) != len(all_ids):
            raise InputError("the shards share ids: they do not come from one sharded run")
        n_total = sum(len(ff) for ff in ordered)
        keys = params_class(first.kind).keys()  # the kind's own parameters
        extra = {k: first.attrs[k] for k in first.attrs
                 if k not in keys and k not in (
                     "format", "format_version", "aekit_version", "command", "kind", "shard_index",
                     "shard_count", CONTENT_HASH, META_HASH)}
        extra.update(shard_index=0, shard_count=1)
        with atomic_path(output) as tmp:
            w = FeatureWriter(tmp, {**{k: first.f.attrs[k] for k in keys
                                       if k in first.f.attrs}, **({"kind": first.kind})},
                              shape, command=command, extra_attrs=extra, expected=n_total)
            try:
                for ff in ordered:
                    n, paths = len(ff), ff.paths
                    cols = {name: ff.column(name) for name in PER_CLIP}
                    check = _content_hasher(shape)  # every value is read: verify the shard's hash
                    for s in range(0, n, block):
                        e = min(n, s + block)
                        meta = {name: col[s:e] for name, col in cols.items()}
                        x = ff.read(np.arange(s, e))
                        _feed_rows(check, x)
                        w.append(x, ff.ids[s:e], paths[s:e], meta)
                    if ff.content_sha256 is not None and check.hexdigest() != ff.content_sha256:
                        raise InputError(f"{ff.path}: data checksum mismatch (the SHA-256 of "
                                         "/features differs from the one written): the values "
                                         "were changed; featurize it again")
                    fails = ff.failures()
                    w.add_failures([p for p, _ in fails], [r for _, r in fails])
                w.close()
            finally:
                w.abort()
        return n_total
    finally:
        for ff in files:
            ff.close()
