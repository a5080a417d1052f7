"""The features file: the HDF5 layout ae-featurize writes and every later command reads.

Layout (format ``aekit-features``, version 2)::

    /features            float32 [N, C, n_mels, frames]   chunked one clip per chunk
    /ids                 utf-8 str [N]    unique keys (path relative to the inputs' common root,
                                          without extension, unless given otherwise)
    /paths               utf-8 str [N]    the file each clip was read from
    /source_sample_rate  int32 [N]        the file's own rate (Hz)
    /source_channels     int16 [N]        the file's own channel count
    /source_frames       int64 [N]        the file's length in its own samples
    /valid_samples       int64 [N]        samples at the target rate before zero-padding
                                          (<= num_samples; < num_samples means padded)
    /truncated           uint8 [N]        1: the file's body was shorter than its header
                                          declared (cut-off download or copy); zero-padded
    /failed/paths        utf-8 str [F]    inputs that could not be featurized
    /failed/reasons      utf-8 str [F]    one line each
    attrs: format, format_version, aekit_version, command, kind, the parameters of the
           kind (logmel: ``MelParams.keys()``: sample_rate, num_samples, n_fft, hop_length,
           n_mels, top_db, f_min, f_max, channels, channel_policy, mel_scale, mel_norm,
           pad_mode, amin, amin_mode, window, power; a file written before one of these
           existed lacks it and reads as ``MelParams.LEGACY``), num_inputs, inputs_sha256,
           shard_index, shard_count,
           features_sha256 (SHA-256 of the features' values, ``content_sha256``),
           zero_clips (clips that were all zeros when written: normally 0),
           meta_sha256 (SHA-256 of every other attribute, the ids, the paths and the
           failure records, ``meta_sha256``; checked at every open)
    ``kind`` names the feature kind (``aekit.audio.features.FEATURE_KINDS``); files written
    before it existed have none and are read as 'logmel'.

No pickled objects anywhere: strings are HDF5 variable-length UTF-8, numbers are
plain datasets and attributes. The numeric datasets carry HDF5's Fletcher-32 checksum
filter, so a flipped bit is an error at read time, not a wrong number. Every open checks
the file's consistency (``check_integrity``) and every read checks the rows it returns
for NaN/Inf (``check_finite``). ``/truncated`` is absent from files written before it
existed (read as all 0).

What Fletcher-32 cannot see is covered too: ``meta_sha256`` (strings and attributes are
small, so it is checked at every open); the chunk index of every dataset (each row held
by exactly one chunk, checked at open: a damaged index would read a clip as its fill
value); and /features' fill value is NaN, never a feature, so a row without data is an
error at read time, as is a row read as all zeros from a file that wrote none (Fletcher-32
of zeros is 0: a chunk address pointing into zeroed space). The datasets' HDF5 datatypes
must be the standard ones. Version-1 files (written before the hashes) are still read, without
these two hashes; the chunk index and the values are checked as for version 2.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from aekit import __version__
from aekit.audio.features import MelParams
from aekit.audio.kinds import DEFAULT_KIND, mismatch, params_class
from aekit.data.integrity import (CONTENT_HASH, FORMAT, FORMAT_VERSION, META_HASH,
                                  OPTIONAL_PER_CLIP, PER_CLIP, STR, ZERO_CLIPS, _attr,
                                  _content_hasher, _failed_digest, _feed_rows, _first_line,
                                  _read_error, _strings, _StringsHash, _text_attr, check_finite,
                                  check_integrity, check_rows, meta_sha256)
from aekit.errors import InputError
from aekit.system.textinput import text_name

LOG = logging.getLogger("aekit")

#: The attributes that define log-Mel features (the default kind's; each kind's are
#: ``params_class(kind).keys()``).
FEATURE_PARAM_KEYS = MelParams.keys()

def feature_params(attrs) -> dict:
    """The feature-defining parameters of an attrs mapping (HDF5 attrs or a dict).

    The keys are those of the file's feature kind (attribute ``kind``; none: logmel, as
    every file written before kinds existed); ``kind`` itself is included unless logmel,
    so the parameters recorded in model files stay as they were.
    """
    kind = _attr(attrs["kind"]) if "kind" in attrs else DEFAULT_KIND
    out = {} if kind == DEFAULT_KIND else {"kind": kind}
    for k in params_class(kind).keys():
        if k in attrs:
            v = _attr(attrs[k])
            out[k] = None if (isinstance(v, str) and v == "none") else v
    return out


def params_mismatch(a: dict, b: dict) -> list[str]:
    """Human-readable differences between two feature-parameter dicts (an empty list when
    equal): the kinds', then the kind's own compatibility check (``aekit.audio.kinds``; a
    parameter one side lacks counts as the value files written before it were computed with,
    the kind's ``LEGACY``, never as a newer default)."""
    return mismatch(a, b)


class FeatureWriter:
    """Append-only writer of a features file (use on a temporary path, then rename)."""

    def __init__(self, path: str | os.PathLike, params: dict, shape: Sequence[int],
                 command: str = "", extra_attrs: dict | None = None, expected: int = 0):
        c, m, t = (int(x) for x in shape)
        self.clip_shape = (c, m, t)
        self.f = h5py.File(path, "w", libver=("earliest", "v110"), track_order=False)
        f = self.f
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["aekit_version"] = __version__
        f.attrs["command"] = _text_attr(command)
        f.attrs["kind"] = params.get("kind", DEFAULT_KIND)
        for k, v in params.items():
            f.attrs[k] = "none" if v is None else _text_attr(v)
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = _text_attr(v)
        start = max(int(expected), 1)
        # Fletcher-32 on every numeric dataset: bit rot is detected when the chunk is read.
        # Fill value NaN: a row whose chunk is missing (a damaged chunk index) reads as NaN,
        # which every read refuses, never as a clip of zeros.
        f.create_dataset("features", shape=(0, c, m, t), maxshape=(None, c, m, t),
                         dtype=np.float32, chunks=(1, c, m, t), fletcher32=True,
                         fillvalue=np.float32("nan"))
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(min(start, 4096),))
        f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(min(start, 4096),))
        for name, dt in PER_CLIP.items():
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(min(start, 4096),),
                             fletcher32=True)
        self.datasets = {name: f[name] for name in ("features", "ids", "paths", *PER_CLIP)}
        self.n = 0
        self.failed_paths: list[str] = []
        self.failed_reasons: list[str] = []
        # The hashes are fed as the rows are written: no second pass over the file.
        self._content = _content_hasher(self.clip_shape)
        self._ids_hash, self._paths_hash = _StringsHash(), _StringsHash()
        self._zero_clips = 0

    def append(self, features: np.ndarray, ids: Sequence[str], paths: Sequence[str],
               meta: dict[str, Sequence[int]]) -> None:
        k = len(ids)
        if k == 0:
            return
        assert features.shape[1:] == self.clip_shape, (features.shape, self.clip_shape)
        n0, n1 = self.n, self.n + k
        d = self.datasets  # opened once: a lookup by name costs more than a block's metadata
        for ds in d.values():
            ds.resize(n1, axis=0)
        x = features.astype(np.float32, copy=False)
        d["features"][n0:n1] = x
        _feed_rows(self._content, x)
        self._zero_clips += int(np.count_nonzero(~x.reshape(k, -1).any(axis=1)))
        ids, paths = list(ids), list(paths)
        d["ids"][n0:n1] = ids
        d["paths"][n0:n1] = paths
        self._ids_hash.update(ids)
        self._paths_hash.update(paths)
        for name, dt in PER_CLIP.items():
            d[name][n0:n1] = np.asarray(meta[name], dtype=dt)
        self.n = n1

    def add_failures(self, paths: Sequence[str], reasons: Sequence[str]) -> None:
        self.failed_paths.extend(text_name(str(p)) for p in paths)  # \xNN: not UTF-8 names
        self.failed_reasons.extend(text_name(str(r)) for r in reasons)

    def close(self) -> None:
        if self.f.id.valid:
            g = self.f.create_group("failed")
            g.create_dataset("paths", data=np.array(self.failed_paths, dtype=object), dtype=STR)
            g.create_dataset("reasons", data=np.array(self.failed_reasons, dtype=object), dtype=STR)
            self.f.attrs[CONTENT_HASH] = self._content.hexdigest()
            self.f.attrs[ZERO_CLIPS] = self._zero_clips
            self.f.attrs[META_HASH] = meta_sha256(
                self.f.attrs, self._ids_hash.digest(), self._paths_hash.digest(),
                _failed_digest(self.failed_paths, self.failed_reasons))
            self.f.close()

    def abort(self) -> None:
        if self.f.id.valid:
            self.f.close()


_NOTED: set[str] = set()  # format-1 files already warned about (once per path)


class FeatureFile:
    """Read access to a features file. Use as a context manager or call close().

    ``read(indices)`` returns float32 [len(indices), C, M, T] in the order given.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if str(path) == "-":
            raise InputError("features must be an HDF5 file path, not '-' (HDF5 cannot be streamed)")
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise InputError(f"{self.path}: is a directory, expected an HDF5 features file")
        try:
            self.f = h5py.File(self.path, "r")
        except OSError:
            raise InputError(f"{self.path}: not an HDF5 file") from None
        self._ids: list[str] | None = None
        self._paths: list[str] | None = None
        self._failures: list[tuple[str, str]] | None = None
        self._no_zero: bool | None = None
        try:
            fmt = _attr(self.f.attrs.get("format", ""))
            if fmt != FORMAT or "features" not in self.f or "ids" not in self.f:
                raise InputError(f"{self.path}: not an aekit features file (format={fmt!r}); "
                                 "make one with ae-featurize")
            self.features = self.f["features"]
            check_integrity(self)
        except BaseException as exc:
            self.f.close()
            if isinstance(exc, (OSError, KeyError, ValueError, TypeError, RuntimeError,
                                AttributeError, IndexError, UnicodeError)):
                # HDF5 could not parse its own metadata (object headers, heaps, B-trees)
                raise InputError(f"{self.path}: corrupt or not an aekit features file "
                                 f"({_first_line(exc)})") from None
            raise
        if _attr(self.f.attrs.get("format_version")) == 1 and str(self.path) not in _NOTED:
            _NOTED.add(str(self.path))
            LOG.warning("%s: features format 1 (an older aekit): its ids, paths and attributes "
                        "carry no checksum; ae-merge %s -o NEW.h5 rewrites it with one",
                        self.path, self.path)

    # -- metadata
    @property
    def attrs(self) -> dict:
        return {k: _attr(v) for k, v in self.f.attrs.items()}

    @property
    def params(self) -> dict:
        return feature_params(self.f.attrs)

    @property
    def kind(self) -> str:
        """The feature kind ('logmel' for files written before kinds were recorded)."""
        return str(_attr(self.f.attrs["kind"])) if "kind" in self.f.attrs else DEFAULT_KIND

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return tuple(int(x) for x in self.features.shape[1:])  # type: ignore[return-value]

    @property
    def width(self) -> int:
        c, m, t = self.clip_shape
        return c * m * t

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = _strings(self.f["ids"])
        return self._ids

    @property
    def paths(self) -> list[str]:
        if self._paths is None:
            if "paths" not in self.f:
                raise InputError(f"{self.path}: /paths is missing (the file is damaged or was not "
                                 "written by ae-featurize)")
            try:
                self._paths = _strings(self.f["paths"])
            except (OSError, ValueError, UnicodeError) as exc:
                raise InputError(f"{self.path}: corrupt or not an aekit features file "
                                 f"(/paths: {_first_line(exc)})") from None
        return self._paths

    @property
    def no_zero_clips(self) -> bool:
        """True when the file records that no clip was all zeros (format 2)."""
        if self._no_zero is None:
            v = _attr(self.f.attrs.get(ZERO_CLIPS))
            self._no_zero = isinstance(v, int) and not isinstance(v, bool) and v == 0
        return self._no_zero

    @property
    def content_sha256(self) -> str | None:
        """The SHA-256 of the features' values stored at write time (None: format 1)."""
        v = _attr(self.f.attrs.get(CONTENT_HASH))
        return v if isinstance(v, str) else None

    def column(self, name: str) -> np.ndarray:
        if name in OPTIONAL_PER_CLIP and name not in self.f:
            return np.zeros(len(self), dtype=PER_CLIP[name])
        try:
            return self.f[name][()]
        except OSError as exc:
            raise _read_error(self.path, name, exc) from None

    def failures(self) -> list[tuple[str, str]]:
        if self._failures is None:
            try:
                self._failures = [] if "failed" not in self.f else list(
                    zip(_strings(self.f["failed/paths"]), _strings(self.f["failed/reasons"])))
            except (OSError, KeyError, ValueError, UnicodeError) as exc:
                raise InputError(f"{self.path}: corrupt or not an aekit features file "
                                 f"(/failed: {_first_line(exc)})") from None
        return list(self._failures)

    # -- data
    def read(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Features of the given rows (all when None), in the order given."""
        if indices is None:
            indices = np.arange(len(self))
        idx = check_rows(indices, len(self))
        if idx.size == 0:
            return np.zeros((0, *self.clip_shape), dtype=np.float32)
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        # Read runs of consecutive rows as slices: far faster than h5py fancy indexing.
        breaks = np.flatnonzero(np.diff(sorted_idx) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [sorted_idx.size]])
        tmp = np.empty((idx.size, *self.clip_shape), dtype=np.float32)
        try:
            for s, e in zip(starts, ends):
                lo, hi = int(sorted_idx[s]), int(sorted_idx[e - 1]) + 1
                if hi - lo == e - s:
                    self.features.read_direct(tmp, np.s_[lo:hi], np.s_[s:e])
                else:  # duplicates in the index
                    tmp[s:e] = self.features[lo:hi][sorted_idx[s:e] - lo]
        except OSError as exc:
            raise _read_error(self.path, "features", exc) from None
        check_finite(self, tmp, sorted_idx)
        if np.array_equal(order, np.arange(idx.size)):
            return tmp
        out = np.empty_like(tmp)
        out[order] = tmp
        return out

    def iter_blocks(self, indices: Sequence[int] | np.ndarray | None = None,
                    block: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (row indices, features) in blocks of at most ``block`` rows; memory stays flat."""
        idx = np.arange(len(self)) if indices is None else check_rows(indices, len(self))
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise InputError(f"block size must be a positive integer, got {block!r}")
        for s in range(0, idx.size, block):
            part = idx[s:s + block]
            yield part, self.read(part)

    def close(self) -> None:
        if self.f.id.valid:
            self.f.close()

    def __enter__(self) -> "FeatureFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_ids(path: str | os.PathLike) -> list[str]:
    with FeatureFile(path) as ff:
        return list(ff.ids)
