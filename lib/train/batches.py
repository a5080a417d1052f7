"""Training data for ae-train: which rows, and how batches reach the model.

Rows: ``select_training_rows`` applies a split CSV (validation = fold K, training = the
other train folds, test rows never touched) and a ``where`` query on a labels CSV.

Units: a training example is a *unit*, ``model.units_per_clip(T)`` of them per clip
(1 for a whole-clip model; one per window for a model of frame windows). Unit u is
offset ``u % k`` of clip ``u // k``; the model cuts a batch of units out of the clips
held (``gather_units``) on the fly, so no copy of the data set's units is ever made (the
clips themselves are held once, normalized and laid out by the model: ``unit_store``).

Batches: the epoch's order is one permutation of the local training units, a pure
function of (seed, epoch, rank, world size), so a resumed run replays it exactly.
Two sources serve the batches of that order:
  MemorySource  every clip loaded once as one float32 tensor [N, C, M, T], normalized
                once and laid out by the model (``unit_store``), block by block, on the
                training device (in pinned host memory when it would take more than a
                tenth of a GPU); a batch is an index into it (no DataLoader).
  StreamSource  clips read from the HDF5 file in contiguous blocks of 256 clips by a
                background thread (its own file handle) while the step runs, each block
                normalized and laid out at its first use; the order
                shuffles contiguous blocks of units and units within a block, so each
                block is read once per epoch and a batch is an index into one or two.
"""

from __future__ import annotations

import hashlib
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from aekit.errors import InputError
from aekit.train.settings import DATA_MODES
from aekit.data.selection import load_labels, load_splits, query_rows, select_rows
from aekit.data.store import FeatureFile

MEMORY_FRACTION = 0.25  # load into memory when the rows take less than this share of RAM
STREAM_BLOCK_ROWS = 256  # rows per contiguous block when streaming from HDF5
DEVICE_FRACTION = 0.10  # keep in-memory rows on the GPU when under this share of its memory
PREPARE_ROWS = 1024  # clips normalized and laid out at a time when loading into memory


@dataclass
class RowSelection:
    """File row indices (ascending) of the training and validation rows."""

    train: np.ndarray
    val: np.ndarray
    ids_digest: str  # identifies the exact rows, so a resume on other rows is refused

    @property
    def n_train(self) -> int:
        return int(self.train.size)

    @property
    def n_val(self) -> int:
        return int(self.val.size)


def _digest(ids: Sequence[str], train: np.ndarray, val: np.ndarray) -> str:
    h = hashlib.sha256()
    for part in (train, val):
        for i in part:
            h.update(ids[int(i)].encode("utf-8") + b"\0")
        h.update(b"\1")
    return h.hexdigest()[:16]


def select_training_rows(ids: Sequence[str], splits_path: str | None = None,
                         fold: int | None = None, labels_path: str | None = None,
                         where: str | None = None) -> RowSelection:
    """Training and validation rows of a features file.

    With a split file: train = train rows not in ``fold``, val = train rows of ``fold``
    (none when fold is None); test rows are never selected. Without one: every row
    trains and there is no validation. ``where`` keeps only rows whose labels match.
    """
    if where is not None and labels_path is None:
        raise InputError("needs a labels file", param="where")
    if splits_path is not None:
        splits = load_splits(splits_path, ids)
        train = select_rows(ids, splits, "train", fold)
        val = select_rows(ids, splits, "val", fold) if fold is not None else np.zeros(0, np.int64)
    else:
        train = select_rows(ids, None, None, fold)
        val = np.zeros(0, np.int64)
    if where is not None:
        labels = load_labels(labels_path, ids)
        keep = query_rows(labels, where)
        n_before = train.size
        train, val = train[keep[train]], val[keep[val]]
        if train.size == 0:
            raise InputError(f"empty training set: no training row matches {where!r} "
                             f"(of {n_before})", param="where")
    if train.size == 0:
        raise InputError("empty training set: no rows to train on"
                         + (f" (fold {fold} of the split file leaves none)" if splits_path else ""))
    train = train.astype(np.int64)
    val = val.astype(np.int64)
    return RowSelection(train=train, val=val, ids_digest=_digest(ids, train, val))


# --------------------------------------------------------------------------- epoch order

def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                block: int | None = None) -> torch.Tensor:
    """This rank's order of local row positions 0..n-1 for one epoch (int64).

    The permutation is drawn from a generator seeded with seed + epoch, as in
    torch's DistributedSampler; with several processes it is padded (by repeating its
    head) to a multiple of ``world`` and cut into contiguous equal shards. With ``block``
    the permutation shuffles blocks of consecutive rows, then rows within each block.
    """
    g = torch.Generator()
    g.manual_seed(int(seed) + int(epoch))
    if block is None or block >= n:
        perm = torch.randperm(n, generator=g)
    else:
        nb = math.ceil(n / block)
        parts = []
        for b in torch.randperm(nb, generator=g).tolist():
            lo, hi = b * block, min(n, (b + 1) * block)
            parts.append(lo + torch.randperm(hi - lo, generator=g))
        perm = torch.cat(parts)
    if world > 1:
        per = math.ceil(n / world)
        total = per * world
        if total > n:
            reps = math.ceil(total / n)
            perm = torch.cat([perm] * reps)[:total]
        perm = perm[rank * per:(rank + 1) * per]
    return perm


def batch_sizes(n: int, batch_size: int, balanced: bool) -> list[int]:
    """Sizes of the batches of an epoch of n rows.

    balanced: ceil(n / batch_size) batches whose sizes differ by at most one (184 rows at 25
    -> 8 batches of 23), so no tiny last batch skews BatchNorm statistics or the step size.
    Otherwise the tutorial's DataLoader: full batches, then the remainder.
    """
    if n <= 0:
        return []
    if not balanced:
        sizes = [batch_size] * (n // batch_size)
        if n % batch_size:
            sizes.append(n % batch_size)
        return sizes
    k = math.ceil(n / batch_size)
    base, extra = divmod(n, k)
    return [base + 1] * extra + [base] * (k - extra)


# --------------------------------------------------------------------------- sources

def fits_in_memory(n_rows: int, width: int, copies: int = 1) -> bool:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return False
    return n_rows * width * 4 * copies < MEMORY_FRACTION * ram


class WholeClips:
    """The unit plan of a whole-clip model (one unit per clip: the flat clip), for sources
    built without a model (benchmarks, notebooks)."""

    def units_per_clip(self, frames: int) -> int:
        return 1

    def take_units(self, clips: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return clips.flatten(1)

    def unit_store(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def gather_units(self, x: torch.Tensor, clip: torch.Tensor, offsets: torch.Tensor
                     ) -> torch.Tensor:
        return x.index_select(0, clip).flatten(1)


def _split_units(u: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit numbers -> (clip position, offset in the clip): unit u is offset u % k of clip u // k."""
    if k == 1:
        return u, torch.zeros_like(u)
    return torch.div(u, k, rounding_mode="floor"), u % k


class MemorySource:
    """Clips held as one normalized float32 tensor on the device, laid out by the model
    (``unit_store``: [N, C, M, T] as read, or the model's own layout); a batch of units is
    an index into it, cut into units by the model (``gather_units``)."""

    streaming = False

    def __init__(self, ff: FeatureFile, rows: np.ndarray, normalizer, device: torch.device,
                 check_finite: bool = True, model=None):
        x = torch.from_numpy(ff.read(rows))  # [N, C, M, T]
        if check_finite and x.numel():
            bad = (~torch.isfinite(x)).flatten(1).any(1)
            if bool(bad.any()):
                raise InputError(f"{ff.path}: {int(bad.sum())} clip(s) contain NaN or Inf values")
        self._init(x, normalizer, device, model)

    def _init(self, x: torch.Tensor, normalizer, device: torch.device, model) -> None:
        self.raw = x
        self.normalizer = normalizer
        self.device = device
        self.home = device  # where the clips live: the device, or pinned host memory
        self.x: torch.Tensor | None = None
        self.model = model if model is not None else WholeClips()
        self.n_clips = int(x.shape[0])
        self.k = int(self.model.units_per_clip(x.shape[-1]))

    @classmethod
    def from_tensor(cls, x: torch.Tensor, normalizer, device: torch.device,
                    model=None) -> "MemorySource":
        """A source over clips already in memory, x [N, C, M, T] (or [N, D]) raw."""
        self = cls.__new__(cls)
        self._init(x, normalizer, device, model)
        return self

    def fit_blocks(self, block: int = 1024) -> Iterator[torch.Tensor]:
        for s in range(0, self.raw.shape[0], block):
            yield self.raw[s:s + block]

    def prepare(self) -> None:
        """Normalize once (after the normalizer is fitted or restored), lay the clips out
        for the model (``unit_store``) and move them to the device, PREPARE_ROWS clips at a
        time (the held copy and one block at most beside the raw clips).

        On a GPU the clips stay in (pinned) host memory when they would take more than a
        tenth of the GPU's memory, and each batch is copied over as it is used.
        """
        raw, self.raw = self.raw, None  # type: ignore[assignment]
        self.home = self.device
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            if raw.numel() * 4 > DEVICE_FRACTION * total:
                self.home = torch.device("cpu")
        n = self.normalizer

        def laid_out(part: torch.Tensor) -> torch.Tensor:
            if self.home == self.device:
                return self.model.unit_store(n.transform(part.to(self.device)))
            return self.model.unit_store(part if n.mode == "none"
                                         else (part - n.mean.cpu()) / n.std.cpu())

        first = laid_out(raw[:PREPARE_ROWS])
        if (first.device == raw.device and first.data_ptr() == raw.data_ptr()
                and self.home == self.device):  # nothing to copy: the raw clips as they are
            self.x = laid_out(raw).contiguous()
            return
        x = torch.empty((raw.shape[0], *first.shape[1:]), dtype=first.dtype, device=self.home,
                        pin_memory=self.home != self.device)
        x[:first.shape[0]] = first
        del first
        for s in range(PREPARE_ROWS, raw.shape[0], PREPARE_ROWS):
            x[s:s + PREPARE_ROWS] = laid_out(raw[s:s + PREPARE_ROWS])
        self.x = x

    def __len__(self) -> int:
        """The number of training units (clips x units per clip)."""
        return self.n_clips * self.k

    def batches(self, order: torch.Tensor, sizes: Sequence[int], start: int = 0
                ) -> Iterator[torch.Tensor]:
        order = order.to(self.home)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        for i in range(start, len(sizes)):
            clip, off = _split_units(order[offsets[i]:offsets[i + 1]], self.k)
            # One indexing of the clip tensor per batch (the model's units, not whole clips).
            units = self.model.gather_units(self.x, clip, off.to(self.home))  # [b, D]
            yield units.to(self.device, non_blocking=True)

    def blocks(self, block: int = 256) -> Iterator[torch.Tensor]:
        """Every unit once, in order, ``block`` units at a time (validation)."""
        for s in range(0, len(self), block):
            u = torch.arange(s, min(len(self), s + block), device=self.home)
            clip, off = _split_units(u, self.k)
            yield self.model.gather_units(self.x, clip, off).to(self.device, non_blocking=True)


def _index(a: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(device)


class _BlockReader:
    """Reads the blocks of clips a pass needs, in the order it first needs them, on a
    background thread (``ahead`` blocks in flight) or inline (``ahead`` 0).

    A block is ``block`` consecutive selected rows, read as contiguous slices of the file
    (one HDF5 read per run of rows) and handed to ``prepare``; the thread holds its own
    handle on the file and reads while the step runs (its torch kernels release the GIL).
    """

    def __init__(self, path: str, rows: np.ndarray, block: int, blocks: list[int],
                 prepare: Callable[[torch.Tensor], torch.Tensor], ahead: int):
        self.path, self.rows, self.block, self.order = path, rows, block, blocks
        self.prepare, self.ahead = prepare, ahead
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if ahead > 0 and blocks:
            self.q: queue.Queue = queue.Queue(maxsize=ahead)
            self.thread = threading.Thread(target=self._run, name="aekit-stream", daemon=True)
            self.thread.start()
        else:
            self.ff: FeatureFile | None = None
            self.it = iter(blocks)

    def _read(self, ff: FeatureFile, b: int) -> torch.Tensor:
        rows = self.rows[b * self.block:(b + 1) * self.block]
        return self.prepare(torch.from_numpy(ff.read(rows)))  # [n, C, M, T]

    def _put(self, item) -> bool:
        """Queue ``item`` once there is room; False when the consumer has stopped."""
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            with FeatureFile(self.path) as ff:
                for b in self.order:
                    if not self._put((b, self._read(ff, b))):
                        return
        except BaseException as exc:  # handed to the consumer, raised there as itself
            # (waiting for room like any block: dropped, the consumer would wait forever)
            self._put((None, exc))

    def next(self) -> tuple[int, torch.Tensor]:
        if self.thread is None:
            if self.ff is None:
                self.ff = FeatureFile(self.path)
            b = next(self.it)
            return b, self._read(self.ff, b)
        b, item = self.q.get()
        if b is None:
            raise item
        return b, item

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()
        elif self.ff is not None:
            self.ff.close()


class StreamSource:
    """Clips read from HDF5 in contiguous blocks, prefetched on a thread while the step
    runs, normalized and laid out once per block on the training thread, cut into units by
    the model.

    The epoch order (``epoch_order(..., block=STREAM_BLOCK_ROWS * k)``) visits units block
    by block, so a batch needs one or two blocks and each block is read once per epoch;
    any other order is served correctly too (a block stays until its last use).
    """

    streaming = True

    def __init__(self, ff: FeatureFile, rows: np.ndarray, normalizer, device: torch.device,
                 workers: int = 2, model=None, block: int = STREAM_BLOCK_ROWS):
        self.path = str(ff.path)
        self.rows = rows
        self.normalizer = normalizer
        self.device = device
        self.workers = workers
        self.block = block
        self.model = model if model is not None else WholeClips()
        self.k = int(self.model.units_per_clip(ff.clip_shape[-1]))

    def __len__(self) -> int:
        """The number of training units (clips x units per clip)."""
        return int(self.rows.size) * self.k

    def fit_blocks(self, block: int = 1024) -> Iterator[np.ndarray]:
        with FeatureFile(self.path) as ff:
            for _, b in ff.iter_blocks(self.rows, block=block):
                yield b

    def prepare(self) -> None:
        pass

    def _prepare_block(self, raw: torch.Tensor) -> torch.Tensor:
        """On the reader's thread: the block as read (pinned for a GPU). No torch
        arithmetic there: a torch operation on a second thread starts a second team of
        intra-op threads, which fights the step's own for the cores (measured on 2 cores:
        normalizing and laying blocks out on the reader's thread cost 20 % of the
        windows/s of a frames training, doing it here between steps about 1 %)."""
        return raw.pin_memory() if self.device.type == "cuda" else raw

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        """On the training thread, at a block's first use: normalized, laid out for the
        model, on the device."""
        return self.model.unit_store(self.normalizer.transform(x.to(self.device,
                                                                     non_blocking=True)))

    def _serve(self, batches: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """Units [b, D] of each batch of unit numbers, blocks read ahead in order of first use."""
        clip_of = [u // self.k for u in batches]
        blocks_of = [np.unique(c // self.block) for c in clip_of]
        first, last = [], {}
        for i, bs in enumerate(blocks_of):
            for b in bs.tolist():
                if b not in last:
                    first.append(b)
                last[b] = i
        reader = _BlockReader(self.path, self.rows, self.block, first, self._prepare_block,
                              ahead=max(0, self.workers) and max(2, self.workers))
        held: dict[int, torch.Tensor] = {}
        try:
            for i, u in enumerate(batches):
                for b in blocks_of[i].tolist():
                    while b not in held:
                        got, x = reader.next()
                        held[got] = self._on_device(x)
                clips, off = clip_of[i], torch.from_numpy((u % self.k).astype(np.int64))
                bs = blocks_of[i].tolist()
                # Only the batch's units are gathered from the held blocks (for windows of
                # frames: the windows, not the batch's whole clips).
                if len(bs) == 1:
                    x = held[bs[0]]
                    yield self.model.gather_units(x, _index(clips - bs[0] * self.block, x.device),
                                                  off.to(x.device))  # [b, D]
                else:  # the batch spans blocks: gather each block's units into place
                    units = None
                    for b in bs:
                        sel = np.flatnonzero(clips // self.block == b)
                        x = held[b]
                        part = self.model.gather_units(
                            x, _index(clips[sel] - b * self.block, x.device),
                            _index(off.numpy()[sel], x.device))
                        if units is None:
                            units = part.new_empty((len(clips), *part.shape[1:]))
                        units[_index(sel, units.device)] = part
                    yield units  # [b, D]
                for b in bs:
                    if last[b] == i:
                        del held[b]
        finally:
            reader.close()

    def batches(self, order: torch.Tensor, sizes: Sequence[int], start: int = 0
                ) -> Iterator[torch.Tensor]:
        units = order.numpy()
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        yield from self._serve([units[offsets[i]:offsets[i + 1]]
                                for i in range(start, len(sizes))])

    def blocks(self, block: int = 256) -> Iterator[torch.Tensor]:
        n = len(self)
        yield from self._serve([np.arange(s, min(n, s + block)) for s in range(0, n, block)])


def open_source(ff: FeatureFile, rows: np.ndarray, normalizer, device: torch.device,
                mode: str = "auto", workers: int = 2, copies: int = 1, model=None):
    """A MemorySource when the clips fit (mode 'auto': < 25% of RAM), else a StreamSource.

    ``model`` (a ClipModel) decides the training units; None: one unit per clip.
    """
    if mode not in DATA_MODES:
        raise InputError(f"unknown data mode {mode!r}: use auto, memory or stream")
    if mode == "memory" or (mode == "auto" and fits_in_memory(rows.size, ff.width, copies)):
        return MemorySource(ff, rows, normalizer, device, model=model)
    return StreamSource(ff, rows, normalizer, device, workers=workers, model=model)
