"""What makes a features file trustworthy: its layout constants, its hashes (``meta_sha256``,
``features_sha256``) and the checks every open and every read runs (``check_integrity``,
``check_chunks``, ``check_finite``, ``check_rows``), plus the shard fingerprint; the layout
itself is described in ``aekit.data.store``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import h5py
import numpy as np

from aekit.audio.kinds import DEFAULT_KIND, FEATURE_KINDS
from aekit.errors import InputError

if TYPE_CHECKING:
    from aekit.data.store import FeatureFile

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
    from aekit.system.textinput import text_name

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

def _strings(ds) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


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
    kind = a.get("kind")
    if kind is not None and kind != DEFAULT_KIND and kind in FEATURE_KINDS:
        try:  # a kind's own shape from its parameters (logmel's is checked above, key by key)
            want = tuple(FEATURE_KINDS[kind].from_attrs(a).clip_shape)
        except (InputError, TypeError, ValueError, AttributeError, NotImplementedError):
            want = None  # parameters it cannot take: the parameter checks say so, on use
        if want is not None and want != (c, m, t):
            raise InputError(f"{where}: its {kind} parameters give clips {'x'.join(map(str, want))} "
                             f"but the data has {c}x{m}x{t}; the file is damaged")
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


