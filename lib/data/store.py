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

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from aekit import __version__
from aekit.errors import InputError
from aekit.audio.features import DEFAULT_KIND, MelParams, params_class
from aekit.system.fileio import text_name

LOG = logging.getLogger("aekit")

FORMAT = "aekit-features"
FORMAT_VERSION = 2
#: Attributes holding the SHA-256 hashes (format version 2): of the features' values, and
#: of everything else that changes a number or a name (attributes, ids, paths, failures).
CONTENT_HASH = "features_sha256"
META_HASH = "meta_sha256"
#: How many clips were all zeros when written (format 2; real log-Mel dB never is: silence
#: is -100 dB). HDF5's Fletcher-32 of all-zero bytes is 0, so a chunk address damaged to
#: point into zeroed space reads a clip of zeros without error: when none was written so,
#: a row read as all zeros is refused.
ZERO_CLIPS = "zero_clips"

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

#: Versions of the format this code reads (1: without the two hashes).
READABLE_VERSIONS = (1, 2)


def _text_attr(value):
    """An attribute value to store: text is stored as valid UTF-8 (a file name that is not
    UTF-8, in the command line or a provenance path, has those bytes as ``\\xNN``)."""
    from aekit.system.fileio import text_name

    return text_name(value) if isinstance(value, str) else value


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


class _StringsHash:
    """SHA-256 of a sequence of strings, each followed by NUL (fed block by block, with the
    same hash however the sequence is split). Unambiguous: an HDF5 string holds no NUL."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.n = 0

    def update(self, items) -> "_StringsHash":
        items = list(items)
        if items:
            self.h.update("\0".join(items).encode("utf-8", "surrogateescape") + b"\0")
        self.n += len(items)
        return self

    def digest(self) -> bytes:
        return self.h.digest() + self.n.to_bytes(8, "little")


def _content_hasher(clip_shape) -> "hashlib._Hash":
    h = hashlib.sha256(b"aekit-features-data\n")
    h.update("x".join(str(int(v)) for v in clip_shape).encode() + b"\n")
    return h


def _feed_rows(h, x: np.ndarray) -> None:
    h.update(np.ascontiguousarray(x, dtype="<f4").reshape(-1).view(np.uint8))


def _attrs_blob(attrs) -> bytes:
    """Every attribute but ``meta_sha256`` itself, by name, with its type: one canonical text."""
    lines = []
    for k in sorted(attrs.keys()):
        if k == META_HASH:
            continue
        v = _attr(attrs[k])
        if isinstance(v, np.ndarray):
            v = v.tolist()
        lines.append(f"{k}\t{type(v).__name__}\t{v!r}")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def meta_sha256(attrs, ids_digest: bytes, paths_digest: bytes, failed_digest: bytes) -> str:
    """SHA-256 of a features file's attributes (but itself), ids, paths and failure records."""
    h = hashlib.sha256(b"aekit-features-meta\n")
    for part in (_attrs_blob(attrs), ids_digest, paths_digest, failed_digest):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _failed_digest(paths: Sequence[str], reasons: Sequence[str]) -> bytes:
    return (_StringsHash().update(list(paths)).digest()
            + _StringsHash().update(list(reasons)).digest())


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
    """Human-readable differences between two feature-parameter dicts (an empty list when equal).

    A parameter one side lacks (a file or model written before it existed) counts as the value
    such files were computed with (``MelParams.LEGACY``), never as a newer default."""
    import math

    diffs = []
    for k in dict.fromkeys([*FEATURE_PARAM_KEYS, *a, *b]):  # a key known to one side counts
        missing = DEFAULT_KIND if k == "kind" else MelParams.LEGACY.get(k)
        va, vb = a.get(k, missing), b.get(k, missing)
        if isinstance(va, float) or isinstance(vb, float):
            # relative: amin 1e-10 and 2.2e-16 differ (an absolute tolerance would call them equal)
            same = va == vb or (isinstance(va, (int, float)) and isinstance(vb, (int, float))
                                and math.isclose(float(va), float(vb), rel_tol=1e-9, abs_tol=0.0))
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


def _strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


_NOTED: set[str] = set()  # format-1 files already warned about (once per path)


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip()
    return msg.splitlines()[0][:200] if msg else type(exc).__name__


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
    if ff.no_zero_clips and (sums == 0).any():
        zero = [i for i in np.flatnonzero(sums == 0) if not flat[i].any()]
        if zero:
            ids = ff.ids
            raise InputError(f"{ff.path}: {len(zero)} clip(s) read as all zeros although none "
                             "was written so (a damaged HDF5 chunk address): "
                             f"{_preview([ids[int(rows[i])] for i in zero])}; the file is corrupt")
    if np.isfinite(sums).all() and -FEATURE_LIMIT <= flat.min() and flat.max() <= FEATURE_LIMIT:
        return
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~(np.abs(flat) <= FEATURE_LIMIT).all(axis=1))
    if bad.size == 0:
        return
    ids = ff.ids
    names = [ids[int(rows[i])] for i in bad]
    missing = [ids[int(rows[i])] for i in bad if not _row_allocated(ff.features, int(rows[i]))]
    if missing:  # read as the fill value: the chunk index does not point to the row's data
        raise InputError(f"{ff.path}: the data of {len(missing)} clip(s) is missing from the HDF5 "
                         f"chunk index: {_preview(missing)}; the file is corrupt")
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


def _standard_type(ds, dtype) -> bool:
    """Whether a dataset's HDF5 datatype is exactly the standard one of ``dtype`` (either byte
    order): a damaged float or integer description would convert every value silently."""
    t = ds.id.get_type()
    kind = {np.float32: "IEEE_F32", np.int64: "STD_I64", np.int32: "STD_I32",
            np.int16: "STD_I16", np.uint8: "STD_U8"}[dtype]
    return any(t.equal(getattr(h5py.h5t, kind + order)) for order in ("LE", "BE"))


def _row_allocated(ds, row: int) -> bool:
    try:
        info = ds.id.get_chunk_info_by_coord((row,) + (0,) * (ds.ndim - 1))
    except Exception:  # not chunked, or an h5py without the call: cannot tell
        return True
    return info.byte_offset is not None


def check_chunks(f, where, names: Sequence[str]) -> None:
    """Refuse a dataset whose chunk index does not hold exactly one chunk per chunk position
    (InputError): a damaged index reads a row as its fill value without any error from HDF5."""
    for name in names:
        if name not in f:
            continue
        ds = f[name]
        if ds.chunks is None or ds.size == 0:
            continue
        shape, chunks = np.array(ds.shape, dtype=np.int64), np.array(ds.chunks, dtype=np.int64)
        grid = -(-shape // chunks)
        want = int(np.prod(grid))
        fill = ds.fillvalue
        if isinstance(fill, np.floating) and np.isnan(fill):
            # A row without a chunk reads as NaN, which every read refuses: count only (fast)
            ok = ds.id.get_num_chunks() == want
        else:
            offsets: list[tuple] = []
            try:
                ds.id.chunk_iter(lambda info: offsets.append(info.chunk_offset))
                got = np.array(offsets, dtype=np.int64).reshape(-1, ds.ndim)
                pos = got // chunks
                ok = (len(got) == want and bool((got % chunks == 0).all())
                      and bool(((pos >= 0) & (pos < grid)).all())
                      and bool((np.bincount(np.ravel_multi_index(pos.T, grid), minlength=want)
                                == 1).all()))
            except AttributeError:  # h5py without chunk_iter: count only
                ok = ds.id.get_num_chunks() == want
        if not ok:
            raise InputError(f"{where}: the HDF5 chunk index of /{name} does not match its shape "
                             "(rows missing or misplaced); the file is corrupt")


def check_integrity(ff: "FeatureFile") -> None:
    """Refuse a features file that is not internally consistent (InputError, one line).

    Checked: a format version this code reads; /ids, /paths and the per-clip datasets as long
    as /features; /failed/paths as long as /failed/reasons; the shape attributes (channels,
    n_mels, frames from num_samples and hop_length) equal to the data's shape; every
    dataset's chunk index (one chunk per position); from version 2, ``meta_sha256`` (the
    attributes, ids, paths and failure records as written); unique ids.
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
    for name, dt in (("features", np.float32), *PER_CLIP.items()):
        if name in f and not _standard_type(f[name], dt):
            raise InputError(f"{where}: /{name} is not stored as {np.dtype(dt).name} (its HDF5 "
                             "datatype is damaged); the file is corrupt")
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
    check_chunks(f, where, ("features", "ids", "paths", *PER_CLIP))
    if int(version) >= 2:
        stored = {k: _attr(f.attrs.get(k)) for k in (CONTENT_HASH, META_HASH)}
        bad = [k for k, v in stored.items() if not (isinstance(v, str) and len(v) == 64)]
        if bad:
            raise InputError(f"{where}: attribute {bad[0]} is missing or damaged; "
                             "the file is corrupt")
        if "paths" not in f:
            raise InputError(f"{where}: /paths is missing; the file is damaged")
        fails = ff.failures()
        got = meta_sha256(f.attrs, _StringsHash().update(ids).digest(),
                          _StringsHash().update(ff.paths).digest(),
                          _failed_digest([p for p, _ in fails], [r for _, r in fails]))
        if got != stored[META_HASH]:
            raise InputError(f"{where}: metadata checksum mismatch (the SHA-256 of the attributes, "
                             "ids and paths differs from the one written): the file is corrupt; "
                             "featurize it again or restore it from a copy")


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


def content_sha256(ff: FeatureFile, block: int = 256) -> str:
    """The SHA-256 of every row's values, in order, read from the file (one pass over it):
    the same hash as the ``features_sha256`` ``FeatureWriter`` stores. InputError when the
    file stores one that differs (the values were changed after they were written)."""
    h = _content_hasher(ff.clip_shape)
    for _, x in ff.iter_blocks(block=block):
        _feed_rows(h, x)
    got = h.hexdigest()
    if ff.content_sha256 is not None and got != ff.content_sha256:
        raise InputError(f"{ff.path}: data checksum mismatch (the SHA-256 of /features differs "
                         "from the one written): the values were changed; featurize it again "
                         "or restore it from a copy")
    return got


def _int_attr(ff: FeatureFile, name: str, default: int) -> int:
    """An integer attribute of a shard (InputError naming it when it is not one)."""
    v = _attr(ff.f.attrs.get(name, default))
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise InputError(f"{ff.path}: attribute {name}={v!r} is not an integer; the file is "
                         "damaged or not written by ae-featurize")
    return int(v)


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
        all_ids = [x for ff in ordered for x in ff.ids]
        if len(set(all_ids)) != len(all_ids):
            raise InputError("the shards share ids: they do not come from one sharded run")
        n_total = sum(len(ff) for ff in ordered)
        extra = {k: first.attrs[k] for k in first.attrs
                 if k not in FEATURE_PARAM_KEYS and k not in (
                     "format", "format_version", "aekit_version", "command", "kind", "shard_index",
                     "shard_count", CONTENT_HASH, META_HASH)}
        extra.update(shard_index=0, shard_count=1)
        with atomic_path(output) as tmp:
            w = FeatureWriter(tmp, {**{k: first.f.attrs[k] for k in FEATURE_PARAM_KEYS
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


# --------------------------------------------------------------------------- latents files
#
# Latents file layout (format ``aekit-latents``, version 2), written by ae-encode::
#
#     /latents   float32 [N, latent]   the code z of each clip (the model's clip_codes)
#                                      Fletcher-32 checksummed
#     /ids       utf-8 str [N]         the clip ids, in the features file's order
#     attrs: format, format_version, aekit_version, command, model, model_sha256,
#            features, features_sha256, splits, splits_sha256, split, fold, latent,
#            input_shape, arch, and the model's feature parameters,
#            meta_sha256 (version 2: SHA-256 of the other attributes and the ids, as in
#            features files; checked on reading, with the chunk index; /latents' fill value
#            is NaN and a non-finite code is refused)

LATENTS_FORMAT = "aekit-latents"
LATENTS_FORMAT_VERSION = 2
LATENTS_READABLE_VERSIONS = (1, 2)


class LatentsWriter:
    """Append codes block by block to a latents file written atomically (a context manager)."""

    def __init__(self, path: str | os.PathLike, latent: int, attrs: dict, chunk: int = 4096):
        from aekit.system.fileio import atomic_path

        self._atomic = atomic_path(path)
        tmp = self._atomic.__enter__()
        try:
            self.f = h5py.File(tmp, "w", libver=("earliest", "v110"))
            self.f.attrs["format"] = LATENTS_FORMAT
            self.f.attrs["format_version"] = LATENTS_FORMAT_VERSION
            self.f.attrs["aekit_version"] = __version__
            for k, v in attrs.items():
                self.f.attrs[k] = "none" if v is None else _text_attr(v)
        except BaseException as exc:  # the temporary goes, as it does after a failed append
            if getattr(self, "f", None) is not None:
                with contextlib.suppress(Exception):
                    self.f.close()
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.latent = int(latent)
        self.z = self.f.create_dataset("latents", shape=(0, latent), maxshape=(None, latent),
                                       dtype=np.float32, chunks=(chunk, latent),
                                       fletcher32=True, fillvalue=np.float32("nan"))
        self._ids_hash = _StringsHash()
        self.ids = self.f.create_dataset("ids", shape=(0,), maxshape=(None,), dtype=STR,
                                         chunks=(chunk,))
        self.n = 0

    def append(self, z: np.ndarray, ids: Sequence[str]) -> None:
        k = len(ids)
        self.z.resize((self.n + k, self.latent))
        self.ids.resize((self.n + k,))
        self.z[self.n:self.n + k] = z
        ids = list(ids)
        self.ids[self.n:self.n + k] = ids
        self._ids_hash.update(ids)
        self.n += k

    def __enter__(self) -> "LatentsWriter":
        return self

    def __exit__(self, *exc) -> None:
        failed = None
        try:  # closing flushes: on a full disk it fails, and the temporary must still go
            if exc[0] is None and self.f.id.valid:
                self.f.attrs[META_HASH] = meta_sha256(self.f.attrs, self._ids_hash.digest(),
                                                      b"", b"")
            self.f.close()
        except BaseException as err:
            if exc[1] is None:
                failed, exc = err, (type(err), err, err.__traceback__)
            with contextlib.suppress(Exception):
                self.f.close()
        self._atomic.__exit__(*exc)  # removes the temporary on error (raising WriteError)
        if failed is not None:
            raise failed


class LatentsFile:
    """Read a latents file: ``.latents`` float32 [N, latent], ``.ids``, ``.attrs``."""

    def __init__(self, path: str | os.PathLike):
        p = Path(path)
        if not p.exists():
            raise InputError(f"{p}: no such file")
        try:
            f = h5py.File(p, "r")
        except OSError:
            raise InputError(f"{p}: not an HDF5 file") from None
        try:
            with f:
                fmt = f.attrs.get("format", "")
                fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
                if fmt != LATENTS_FORMAT:
                    raise InputError(f"{p}: not an aekit latents file (format={fmt!r}); "
                                     "make one with ae-encode")
                version = _attr(f.attrs.get("format_version"))
                if not isinstance(version, int) or version not in LATENTS_READABLE_VERSIONS:
                    raise InputError(f"{p}: unknown latents format_version {version!r} (this aekit "
                                     f"reads {', '.join(map(str, LATENTS_READABLE_VERSIONS))})")
                check_chunks(f, p, ("latents", "ids"))
                try:
                    self.latents = f["latents"][()]
                except OSError as exc:
                    raise _read_error(p, "latents", exc) from None
                self.ids = _strings(f["ids"])
                if self.latents.ndim != 2 or self.latents.shape[0] != len(self.ids):
                    raise InputError(f"{p}: /latents has shape {self.latents.shape} but there are "
                                     f"{len(self.ids)} ids; the file is damaged")
                if version >= 2 and _attr(f.attrs.get(META_HASH)) != meta_sha256(
                        f.attrs, _StringsHash().update(self.ids).digest(), b"", b""):
                    raise InputError(f"{p}: metadata checksum mismatch (the SHA-256 of the "
                                     "attributes and ids differs from the one written): the file "
                                     "is corrupt")
                if not np.isfinite(self.latents).all():
                    raise InputError(f"{p}: /latents holds NaN or Inf (a missing chunk reads as "
                                     "NaN): the file is corrupt")
                self.attrs = {k: (v.item() if isinstance(v, np.generic) else
                                  v.tolist() if isinstance(v, np.ndarray) else v)
                              for k, v in f.attrs.items()}
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError,
                IndexError, UnicodeError) as exc:
            raise InputError(f"{p}: corrupt or not an aekit latents file "
                             f"({_first_line(exc)})") from None

    def __repr__(self) -> str:  # pragma: no cover - convenience
        return f"LatentsFile(n={len(self.ids)}, latent={self.latents.shape[1]})"
