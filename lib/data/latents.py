"""Latents files (ae-encode's output): the code z of each clip, with ids and provenance."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from aekit import __version__
from aekit.data.integrity import (META_HASH, STR, _attr, _first_line, _read_error, _strings,
                                  _StringsHash, _text_attr, check_chunks, meta_sha256)
from aekit.errors import InputError

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
