"""ae-train's data path: --data stream against --data memory, measured side by side in one run.

    python bench/bench_stream.py              # 10,000 clips of 1 x 32 x 40 (~1 min)
    python bench/bench_stream.py --clips 2000 # a quick check of the script itself

The clips are deliberately small (1 x 32 x 40, 5 KB each; a 51 MB file) so that the step is
cheap and the data path is what is measured: a source that keeps up here keeps up with any
larger model. Each run is its own subprocess (its own peak RSS) training one epoch per pass
with aekit.train.loop.train_step on the tutorial's improved model at small widths (1280 -> 512 ->
256 -> 128 -> 64 -> 32 and back: a fast step, so the data path dominates) and on every other
registered kind except baseline (e.g. the frame-window model, when present), batch 25, CPU:

  memory   MemorySource: the file read into one tensor (load time reported apart), then a
           batch is an index into it
  stream   StreamSource: blocks of 256 clips read by a background thread while the step runs

Cold: the page cache of the file dropped before the pass (``echo 3 > /proc/sys/vm/drop_caches``
when permitted, else posix_fadvise(DONTNEED) on the file), so the reads hit the disk; warm:
the file read once before. Variants are interleaved and the best of ``--repeat`` passes kept.
Target: stream >= 90 % of memory's samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cores, save, table  # noqa: E402

SHAPE = (1, 32, 40)
WIDTHS = dict(hidden=(512, 256, 128, 64), latent=32)  # small: the data path must dominate


def write_file(path: Path, n: int) -> None:
    from aekit.data import store

    params = dict(sample_rate=16000, num_samples=39 * 256, n_fft=1024, hop_length=256,
                  n_mels=SHAPE[1], top_db=80.0, f_min=0.0, f_max=None, window="hann",
                  power=2.0, mel_scale="htk", channels=SHAPE[0], channel_policy="first")
    w = store.FeatureWriter(path, params, SHAPE)
    rng = np.random.default_rng(0)
    for s in range(0, n, 1000):
        k = min(1000, n - s)
        ids = [f"c{i:05d}" for i in range(s, s + k)]
        w.append(rng.normal(-40, 10, (k, *SHAPE)).astype(np.float32), ids, [""] * k,
                 {name: np.zeros(k) for name in store.PER_CLIP})
    w.close()


def drop_cache(path: Path) -> str:
    """Evict the file from the page cache; says how."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return "drop_caches"
    except OSError:
        pass
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return "fadvise"


def one(path: str, arch: str, mode: str, cold: bool, workers: int, threads: int,
        device: str = "cpu") -> dict:
    """One pass (one epoch) in this process; returns its figures."""
    import torch

    from aekit.train import loop as tr
    from aekit.train.batches import STREAM_BLOCK_ROWS, batch_sizes, epoch_order, open_source
    from aekit.models.modelfile import Normalizer
    from aekit.models.registry import build_model, make_config
    from aekit.data.store import FeatureFile

    torch.set_num_threads(threads)
    dev = torch.device(device)
    how = drop_cache(Path(path)) if cold else "warm"
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with FeatureFile(path) as ff:
        config = make_config(arch, ff.clip_shape, **WIDTHS)
        model = build_model(config, dev)
        src = open_source(ff, np.arange(len(ff.ids)), Normalizer("none"), dev, mode, workers,
                          model=model)
    src.prepare()
    load_s = time.perf_counter() - t0
    opt = tr.make_optimizer(model.parameters(), 1e-3)
    n = len(src)
    order = epoch_order(n, 0, 0, block=STREAM_BLOCK_ROWS * src.k if src.streaming else None)
    sizes = batch_sizes(n, 25, False)
    model.train()
    amp = tr.autocast_for(dev, "fp32")
    t0 = time.perf_counter()
    for xb in src.batches(order, sizes):
        tr.train_step(model, opt, xb, None, amp)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    with open("/proc/self/status") as fh:
        rss = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    return {"arch": arch, "mode": mode, "device": str(dev), "cache": how, "units": n, "load_s": load_s,
            "epoch_s": dt, "samples_per_s": n / dt, "peak_rss_mb": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="ae-train --workers for streaming")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the step (1: on a shared 2-core machine, 2 threads "
                         "of tiny ops spin against each other and against the reader)")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when present), cpu, cuda, cuda:N: where every pass runs")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from aekit.system.device import resolve_device

    device = str(resolve_device(args.device))  # refused here when not available
    if args.one:
        path, arch, mode, cold = args.one
        print(json.dumps(one(path, arch, mode, cold == "cold", args.workers, args.threads,
                             device)))
        return 0

    from aekit.models.registry import kind, kinds

    archs = ["improved"]
    for a in kinds():  # other kinds that train on these clips (e.g. the frame-window model)
        if a not in ("baseline", "improved"):
            try:
                kind(a)
                archs.append(a)
            except Exception:  # noqa: BLE001 (a kind not built here is skipped)
                pass
    t_all = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        write_file(path, args.clips)
        size_mb = path.stat().st_size / 2**20

        def sub(arch, mode, cache):
            cmd = [sys.executable, os.path.abspath(__file__), "--workers", str(args.workers),
                   "--threads", str(args.threads), "--device", device,
                   "--one", str(path), arch, mode, cache]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            return json.loads(out.strip().splitlines()[-1])

        best: dict[tuple, dict] = {}
        for _ in range(args.repeat):  # interleaved: memory, stream, ... on the same load
            for arch in archs:
                for cache in ("cold", "warm"):
                    for mode in ("memory", "stream"):
                        r = sub(arch, mode, cache)
                        key = (arch, mode, cache)
                        if key not in best or r["samples_per_s"] > best[key]["samples_per_s"]:
                            best[key] = r
    rows, result = [], {"clips": args.clips, "shape": list(SHAPE), "file_mb": size_mb,
                        "device": device,
                        "cores": cores(), "runs": list(best.values())}
    for arch in archs:
        for cache in ("cold", "warm"):
            m, s = best[(arch, "memory", cache)], best[(arch, "stream", cache)]
            ratio = s["samples_per_s"] / m["samples_per_s"]
            result[f"{arch}_{cache}_stream_vs_memory"] = ratio
            rows.append((arch, f"{cache} ({s['cache'] if cache == 'cold' else 'read before'})",
                         f"{m['samples_per_s']:.0f}", f"{m['load_s']:.2f}",
                         f"{s['samples_per_s']:.0f}", f"{ratio:.0%}",
                         f"{m['peak_rss_mb']:.0f} / {s['peak_rss_mb']:.0f}"))
    print(f"ae-train data path: {args.clips} clips of {'x'.join(map(str, SHAPE))} "
          f"({size_mb:.0f} MB file), batch 25, one epoch per pass, device "
          f"{', '.join(sorted({r['device'] for r in best.values()}))}, {cores()} cores, "
          f"{args.threads} torch thread(s), stream with --workers {args.workers}; "
          f"best of {args.repeat}")
    print(table(rows, ("arch", "page cache", "memory samples/s", "memory load s",
                       "stream samples/s", "stream/memory", "peak RSS MB mem/stream")))
    print("target: stream >= 90 % of memory (samples/s of the epoch; memory's load time apart)")
    print(f"({time.time() - t_all:.0f} s in all)")
    save("stream", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
