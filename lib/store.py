"""The features file: the HDF5 layout ae-featurize writes and every later command reads.

Layout (format ``aekit-features``, version 1)::

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
           n_mels, top_db, f_min, f_max, channels, channel_policy, window, power,
           mel_scale), num_inputs, inputs_sha256, shard_index, shard_count
    ``kind`` names the feature kind (``aekit.features.FEATURE_KINDS``); files written
    before it existed have none and are read as 'logmel'.

No pickled objects anywhere: strings are HDF5 variable-length UTF-8, numbers are
plain datasets and attributes. The numeric datasets carry HDF5's Fletcher-32 checksum
filter, so a flipped bit is an error at read time, not a wrong number. Every open checks
the file's consistency (``check_integrity``) and every read checks the rows it returns
for NaN/Inf (``check_finite``). ``/truncated`` is absent from files written before it
existed (read as all 0).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from . import __version__
from .errors import InputError
from .features import DEFAULT_KIND, MelParams, params_class

FORMAT = "aekit-features"
FORMAT_VERSION = 1

#: Attributes that define log-Mel features (the parameter dataclass is the one list);
#: two files are compatible when these, and their kind, are equal.
FEATURE_PARAM_KEYS = MelParams.keys()

STR = h5py.string_dtype(encoding="utf-8")

PER_CLIP = {
    "source_sample_rate": np.int32,
    "source_channels": np.int16,
    "source_frames": np.int64,
    "valid_samples": np.int64,
    "truncated": np.uint8,
}

#: Per-clip datasets that files of this format version may lack (read as zeros).
OPTIONAL_PER_CLIP = ("truncated",)

#: Versions of the format this code reads.
READABLE_VERSIONS = (1,)


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


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
    """Human-readable differences between two feature-parameter dicts (an empty list when equal)."""
    diffs = []
    for k in dict.fromkeys([*FEATURE_PARAM_KEYS, *a, *b]):  # a key known to one side counts
        missing = DEFAULT_KIND if k == "kind" else None
        va, vb = a.get(k, missing), b.get(k, missing)
        if isinstance(va, float) or isinstance(vb, float):
            same = va == vb or (va is not None and vb is not None and abs(float(va) - float(vb)) < 1e-9)
        else:
            same = va == vb
        if not same:
            diffs.append(f"{k}={va} vs {vb}")
    return diffs


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
        f.attrs["command"] = command
        f.attrs["kind"] = params.get("kind", DEFAULT_KIND)
        for k, v in params.items():
            f.attrs[k] = "none" if v is None else v
        for k, v in (extra_attrs or {}).items():
            f.attrs[k] = v
        start = max(int(expected), 1)
        # Fletcher-32 on every numeric dataset: bit rot is detected when the chunk is read.
        f.create_dataset("features", shape=(0, c, m, t), maxshape=(None, c, m, t),
                         dtype=np.float32, chunks=(1, c, m, t), fletcher32=True)
        f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR, chunks=(min(start, 4096),))
        f.create_dataset("paths", shape=(0,), maxshape=(None,), dtype=STR, chunks=(min(start, 4096),))
        for name, dt in PER_CLIP.items():
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(min(start, 4096),),
                             fletcher32=True)
        self.datasets = {name: f[name] for name in ("features", "ids", "paths", *PER_CLIP)}
        self.n = 0
        self.failed_paths: list[str] = []
        self.failed_reasons: list[str] = []

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
        d["features"][n0:n1] = features.astype(np.float32, copy=False)
        d["ids"][n0:n1] = list(ids)
        d["paths"][n0:n1] = list(paths)
        for name, dt in PER_CLIP.items():
            d[name][n0:n1] = np.asarray(meta[name], dtype=dt)
        self.n = n1

    def add_failures(self, paths: Sequence[str], reasons: Sequence[str]) -> None:
        self.failed_paths.extend(paths)
        self.failed_reasons.extend(reasons)

    def close(self) -> None:
        if self.f.id.valid:
            g = self.f.create_group("failed")
            g.create_dataset("paths", data=np.array(self.failed_paths, dtype=object), dtype=STR)
            g.create_dataset("reasons", data=np.array(self.failed_reasons, dtype=object), dtype=STR)
            self.f.close()

    def abort(self) -> None:
        if self.f.id.valid:
            self.f.close()


def _strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


def _preview(items: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(items[:k])
    return shown + (f" (and {len(items) - k} more)" if len(items) > k else "")


def _read_error(path: Path, name: str, exc: OSError) -> InputError:
    """A failed HDF5 read as one line; a Fletcher-32 mismatch says the file is corrupt."""
    msg = str(exc)
    if any(w in msg.lower() for w in ("checksum", "fletcher", "filter returned failure")):
        return InputError(f"{path}: /{name} is corrupt (HDF5 Fletcher-32 checksum mismatch); "
                          "featurize it again or restore it from a copy")
    return InputError(f"{path}: cannot read /{name}: {msg.splitlines()[0] if msg else type(exc).__name__}")


#: The largest magnitude a feature value may have. Log-Mel dB of float32 audio lies within
#: about [-100, 390] dB; a finite value far beyond (3e38) is corruption, and squares to Inf.
FEATURE_LIMIT = 1e6


def check_finite(ff: "FeatureFile", x: np.ndarray, rows: np.ndarray) -> None:
    """Refuse rows holding NaN, Inf or values beyond +-FEATURE_LIMIT, naming the first bad
    ids (InputError).

    ``x`` [K, ...] are the rows ``rows`` just read. Cheap: one sum per row and the block's
    extremes; only when one is out of bounds is the exact test run.
    """
    if x.size == 0:
        return
    flat = x.reshape(x.shape[0], -1)
    with np.errstate(over="ignore", invalid="ignore"):
        sums = flat.sum(axis=1)
    if np.isfinite(sums).all() and -FEATURE_LIMIT <= flat.min() and flat.max() <= FEATURE_LIMIT:
        return
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~(np.abs(flat) <= FEATURE_LIMIT).all(axis=1))
    if bad.size == 0:
        return
    ids = ff.ids
    names = [ids[int(rows[i])] for i in bad]
    finite = np.isfinite(flat[bad]).all(axis=1)
    what = ("NaN or Inf values" if not finite.any() else
            f"values beyond +-{FEATURE_LIMIT:g} (not log-Mel dB: corrupt?)" if finite.all() else
            f"NaN, Inf or values beyond +-{FEATURE_LIMIT:g}")
    raise InputError(f"{ff.path}: {bad.size} clip(s) contain {what}: {_preview(names)}")


def check_rows(indices, n: int) -> np.ndarray:
    """Row indices as int64, or IndexError (also an InputError) naming the valid range: not
    integers, not 1-D, negative or >= n."""
    idx = np.asarray(indices)
    if idx.size == 0:
        return idx.astype(np.int64).reshape(0)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise RowIndexError(f"row indices must be a 1-D sequence of integers, got "
                            f"{idx.dtype} of shape {list(idx.shape)}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= n:
        raise RowIndexError(f"row index {lo if lo < 0 else hi} out of range: the file has "
                            f"{n} rows (0 to {n - 1})")
    return idx.astype(np.int64, copy=False)


class RowIndexError(InputError, IndexError):
    """A row index outside a file's rows (an InputError for the commands)."""


def check_integrity(ff: "FeatureFile") -> None:
    """Refuse a features file that is not internally consistent (InputError, one line).

    Checked: a format version this code reads; /ids, /paths and the per-clip datasets as long
    as /features; /failed/paths as long as /failed/reasons; the shape attributes (channels,
    n_mels, frames from num_samples and hop_length) equal to the data's shape; unique ids.
    """
    f, where = ff.f, ff.path
    version = _attr(f.attrs.get("format_version", None))
    if not isinstance(version, (int, np.integer)) or int(version) not in READABLE_VERSIONS:
        raise InputError(f"{where}: unknown features format_version {version!r} (this aekit "
                         f"reads {', '.join(map(str, READABLE_VERSIONS))}); written by a newer aekit?")
    feats = f["features"]
    if feats.ndim != 4:
        raise InputError(f"{where}: /features has {feats.ndim} dimensions, expected 4 "
                         "[N, channels, n_mels, frames]")
    n = int(feats.shape[0])
    for name in ("ids", "paths", *PER_CLIP):
        if name not in f:
            if name in OPTIONAL_PER_CLIP or name == "paths":
                continue
            raise InputError(f"{where}: /{name} is missing")
        if f[name].shape != (n,):
            raise InputError(f"{where}: /{name} has shape {f[name].shape} but /features has {n} "
                             "rows; the file is damaged")
    if "failed" in f:
        fp, fr = f.get("failed/paths"), f.get("failed/reasons")
        if fp is None or fr is None or fp.shape != fr.shape:
            raise InputError(f"{where}: /failed/paths and /failed/reasons differ in length; "
                             "the file is damaged")
    _, c, m, t = (int(v) for v in feats.shape)
    a = {k: _attr(v) for k, v in f.attrs.items()}
    for key, want in (("channels", c), ("n_mels", m)):
        if key in a and a[key] != want:
            raise InputError(f"{where}: attribute {key}={a[key]} disagrees with the data's shape "
                             f"{c}x{m}x{t} ({key} {want}); the file is damaged")
    if "num_samples" in a and "hop_length" in a:
        try:
            frames = int(a["num_samples"]) // int(a["hop_length"]) + 1
        except (TypeError, ValueError, ZeroDivisionError):
            frames = None
        if frames != t:
            raise InputError(f"{where}: attributes num_samples={a['num_samples']}, "
                             f"hop_length={a['hop_length']} give {frames} frames but the data has "
                             f"{t}; the file is damaged")
    ids = ff.ids
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups: list[str] = []
        for i in ids:
            if i in seen and i not in dups:
                dups.append(i)
            seen.add(i)
        raise InputError(f"{where}: duplicate ids: {_preview(dups)}; ids must be unique")


def inputs_fingerprint(paths: Sequence[str | os.PathLike], ids: Sequence[str]) -> str:
    """SHA-256 of the whole input list (absolute path and id of each, sorted): shards of one
    run share it, shards made from another input list do not."""
    import hashlib

    lines = sorted(f"{os.path.abspath(p)}\t{i}" for p, i in zip(paths, ids))
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def check_same_inputs(files: Sequence["FeatureFile"]) -> None:
    """Refuse shards whose input-list fingerprints (count + hash) differ, naming the files.

    Shards written before the fingerprint existed (no ``inputs_sha256``) are compared by
    count only, as before, but not mixed with fingerprinted ones."""
    first = files[0]
    key = lambda ff: (ff.attrs.get("num_inputs"), ff.attrs.get("inputs_sha256"))  # noqa: E731
    ref = key(first)
    for ff in files[1:]:
        k = key(ff)
        if k != ref:
            fmt = lambda k: f"{k[0]} inputs, list hash {str(k[1])[:12] if k[1] else 'none'}"  # noqa: E731
            raise InputError(f"{ff.path} was made from a different input list than {first.path} "
                             f"({fmt(k)} vs {fmt(ref)}): not shards of one run")


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
        fmt = _attr(self.f.attrs.get("format", ""))
        if fmt != FORMAT or "features" not in self.f or "ids" not in self.f:
            self.f.close()
            raise InputError(f"{self.path}: not an aekit features file (format={fmt!r}); "
                             "make one with ae-featurize")
        self.features = self.f["features"]
        self._ids: list[str] | None = None
        try:
            check_integrity(self)
        except BaseException:
            self.f.close()
            raise

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
        return _strings(self.f["paths"])

    def column(self, name: str) -> np.ndarray:
        if name in OPTIONAL_PER_CLIP and name not in self.f:
            return np.zeros(len(self), dtype=PER_CLIP[name])
        try:
            return self.f[name][()]
        except OSError as exc:
            raise _read_error(self.path, name, exc) from None

    def failures(self) -> list[tuple[str, str]]:
        if "failed" not in self.f:
            return []
        return list(zip(_strings(self.f["failed/paths"]), _strings(self.f["failed/reasons"])))

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


def merge_shards(inputs: Sequence[str | os.PathLike], output: str | os.PathLike,
                 command: str = "", block: int = 256) -> int:
    """Join the shard files of one ``ae-featurize --shard I/N`` job into one file.

    The result holds the same rows, in the same order, with the same per-clip data and
    failure records as a single unsharded run. Refuses shards made with different
    parameters, from a different input list, or an incomplete or repeated set of shards.
    Returns the number of clips written.
    """
    from .fileio import atomic_path

    if not inputs:
        raise InputError("no shard files given")
    files = [FeatureFile(p) for p in inputs]
    try:
        first = files[0]
        ref = first.params
        shape = first.clip_shape
        count = int(first.attrs.get("shard_count", 1))
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
            if int(a.get("shard_count", 1)) != count or a.get("num_inputs") != total_inputs:
                raise InputError(f"{ff.path} belongs to a different sharded run "
                                 f"(shard_count {a.get('shard_count')}, num_inputs {a.get('num_inputs')}) "
                                 f"than {first.path} (shard_count {count}, num_inputs {total_inputs})")
            i = int(a.get("shard_index", 0))
            if i in seen:
                raise InputError(f"shard {i}/{count} given twice: {seen[i].path} and {ff.path}")
            seen[i] = ff
        missing = sorted(set(range(count)) - set(seen))
        if missing:
            raise InputError(f"incomplete set of shards: missing {', '.join(f'{i}/{count}' for i in missing)}")
        ordered = [seen[i] for i in range(count)]
        all_ids = [x for ff in ordered for x in ff.ids]
        if len(set(all_ids)) != len(all_ids):
            raise InputError("the shards share ids: they do not come from one sharded run")
        n_total = sum(len(ff) for ff in ordered)
        extra = {k: first.attrs[k] for k in first.attrs
                 if k not in FEATURE_PARAM_KEYS and k not in (
                     "format", "format_version", "aekit_version", "command", "kind", "shard_index",
                     "shard_count")}
        extra.update(shard_index=0, shard_count=1)
        with atomic_path(output) as tmp:
            w = FeatureWriter(tmp, {**{k: first.f.attrs[k] for k in FEATURE_PARAM_KEYS
                                       if k in first.f.attrs}, **({"kind": first.kind})},
                              shape, command=command, extra_attrs=extra, expected=n_total)
            try:
                for ff in ordered:
                    n, paths = len(ff), ff.paths
                    cols = {name: ff.column(name) for name in PER_CLIP}
                    for s in range(0, n, block):
                        e = min(n, s + block)
                        meta = {name: col[s:e] for name, col in cols.items()}
                        w.append(ff.read(np.arange(s, e)), ff.ids[s:e], paths[s:e], meta)
                    fails = ff.failures()
                    w.add_failures([p for p, _ in fails], [r for _, r in fails])
                w.close()
            finally:
                w.abort()
        return n_total
    finally:
        for ff in files:
            ff.close()


# --------------------------------------------------------------------------- latents files
#
# Latents file layout (format ``aekit-latents``, version 1), written by ae-encode::
#
#     /latents   float32 [N, latent]   the code z of each clip (the model's clip_codes)
#                                      Fletcher-32 checksummed
#     /ids       utf-8 str [N]         the clip ids, in the features file's order
#     attrs: format, format_version, aekit_version, command, model, model_sha256,
#            features, features_sha256, splits, splits_sha256, split, fold, latent,
#            input_shape, arch, and the model's feature parameters

LATENTS_FORMAT = "aekit-latents"
LATENTS_FORMAT_VERSION = 1


class LatentsWriter:
    """Append codes block by block to a latents file written atomically (a context manager)."""

    def __init__(self, path: str | os.PathLike, latent: int, attrs: dict, chunk: int = 4096):
        from .fileio import atomic_path

        self._atomic = atomic_path(path)
        tmp = self._atomic.__enter__()
        self.f = h5py.File(tmp, "w", libver=("earliest", "v110"))
        self.f.attrs["format"] = LATENTS_FORMAT
        self.f.attrs["format_version"] = LATENTS_FORMAT_VERSION
        self.f.attrs["aekit_version"] = __version__
        for k, v in attrs.items():
            self.f.attrs[k] = "none" if v is None else v
        self.latent = int(latent)
        self.z = self.f.create_dataset("latents", shape=(0, latent), maxshape=(None, latent),
                                       dtype=np.float32, chunks=(chunk, latent),
                                       fletcher32=True)
        self.ids = self.f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR,
                                         chunks=(chunk,))
        self.n = 0

    def append(self, z: np.ndarray, ids: Sequence[str]) -> None:
        k = len(ids)
        self.z.resize((self.n + k, self.latent))
        self.ids.resize((self.n + k,))
        self.z[self.n:self.n + k] = z
        self.ids[self.n:self.n + k] = list(ids)
        self.n += k

    def __enter__(self) -> "LatentsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()
        self._atomic.__exit__(*exc)


class LatentsFile:
    """Read a latents file: ``.latents`` float32 [N, latent], ``.ids``, ``.attrs``."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such file")
        try:
            with h5py.File(p, "r") as f:
                fmt = f.attrs.get("format", "")
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                if fmt != LATENTS_FORMAT:
                    raise InputError(f"{p}: not an aekit latents file (format={fmt!r}); "
                                     "make one with ae-encode")
                self.latents = f["latents"][()]
                self.ids = [s.decode("utf-8") if isinstance(s, bytes) else str(s)
                            for s in f["ids"][()]]
                self.attrs = {k: (v.item() if isinstance(v, np.generic) else
                                  v.tolist() if isinstance(v, np.ndarray) else v)
                              for k, v in f.attrs.items()}
        except OSError:
            raise InputError(f"{p}: not an HDF5 file") from None

    def __repr__(self) -> str:  # pragma: no cover - convenience
        return f"LatentsFile(n={len(self.ids)}, latent={self.latents.shape[1]})"
