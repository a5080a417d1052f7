"""Inference speed of ae-encode / ae-eval: full-size forward passes against the matmul peak.

The full-size model (AEConfig defaults: improved, 2 x 32 x 391 -> 8224 -> 2056 -> 1024 -> 512
-> 256 and back, about 451 M parameters) at batch 256, in one run:
  * peak        achieved GFLOP/s of a 4096^2 fp32 torch.mm with all threads (bench/common.py),
                measured before and after the model runs, the higher kept
  * encode      LoadedModel.encode alone (ae-encode's forward pass, encoder only)
  * forward     LoadedModel.reconstruct (ae-eval's forward pass: normalize, encode, decode)
  * ae-eval     aekit.evaluate.inference.score_rows over an HDF5 features file: read + forward +
                per-clip MSE/MAE, i.e. what the command does per batch
Achieved GFLOP/s = FLOPs per sample (2 x weights of the part run) x samples/s.
Target: forward >= 50 % of the matmul peak on CPU. Runs in about a minute on 2 cores.
Usage: python bench/bench_infer.py [--batch-size 256] [--repeat 3] [--device auto]
(--device auto: CUDA when present, else the CPU.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, cores, matmul_peak_gflops, peak_rss_mib, save, table  # noqa: E402

from aekit.data import store  # noqa: E402
from aekit.evaluate import inference  # noqa: E402
from aekit.system.device import resolve_device  # noqa: E402
from aekit.models.modelfile import LoadedModel, Normalizer  # noqa: E402
from aekit.models.mlp import AEConfig  # noqa: E402
from aekit.models.base import count_parameters  # noqa: E402
from aekit.models.registry import build_model  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3,
                    help="timed batches per measurement (best kept)")
    ap.add_argument("--device", default="auto",
                    help="auto (default: CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    bs = args.batch_size

    cfg = AEConfig()  # the tutorial's full-size model
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    params = count_parameters(model)
    enc_params = count_parameters(model.encoder)
    norm = Normalizer("global", dim=cfg.input_dim)
    norm.mean.fill_(-40.0)
    norm.std.fill_(10.0)
    lm = LoadedModel(model=model, normalizer=norm, config=cfg, feature_params={}).to(dev)
    build_s = time.perf_counter() - t0

    def matmul_peak() -> float:
        if dev.type == "cpu":
            return matmul_peak_gflops(n=4096, repeat=3)
        a = torch.randn(8192, 8192, device=dev)  # same measurement on the accelerator
        torch.mm(a, a)
        _sync(dev)
        return 2 * 8192**3 / best_of(lambda: (torch.mm(a, a), _sync(dev)), 3) / 1e9

    peak_before = matmul_peak()

    x = (torch.randn(bs, *cfg.input_shape) * 10 - 40).to(dev)  # plausible dB values

    def timed(fn) -> float:
        with torch.inference_mode():
            fn()  # warm up (allocator, oneDNN primitives)
            _sync(dev)
            return best_of(lambda: (fn(), _sync(dev)), args.repeat)

    t_enc = timed(lambda: lm.encode(x))
    t_fwd = timed(lambda: lm.reconstruct(x))

    # End to end through a features file, as ae-eval runs it: 2 batches of clips on disk.
    n_clips = 2 * bs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.h5"
        w = store.FeatureWriter(path, {}, cfg.input_shape)
        rng = np.random.default_rng(0)
        for s in range(0, n_clips, bs):
            k = min(bs, n_clips - s)
            w.append(rng.normal(-40, 10, (k, *cfg.input_shape)).astype(np.float32),
                     [f"c{i}" for i in range(s, s + k)], [""] * k,
                     {name: [0] * k for name in store.PER_CLIP})
        w.close()
        with store.FeatureFile(path) as ff:
            inference.score_rows(lm, ff, np.arange(bs), bs, dev)  # warm up, page cache
            t_e2e = best_of(lambda: inference.score_rows(lm, ff, None, bs, dev),
                            max(1, args.repeat - 1))

    # The machine may be shared: measure the peak before and after, keep the higher
    # (the less flattering ratio).
    peak = max(peak_before, matmul_peak())

    rows = []
    result = {"device": str(dev), "threads": torch.get_num_threads(), "cores": cores(),
              "batch_size": bs, "parameters": params, "matmul_peak_gflops": peak,
              "model_build_s": build_s}
    for name, secs, n, p in (("encode (encoder only)", t_enc, bs, enc_params),
                             ("forward (reconstruct)", t_fwd, bs, params),
                             ("ae-eval score_rows (file)", t_e2e, n_clips, params)):
        sps = n / secs
        gflops = 2 * p * sps / 1e9
        rows.append((name, f"{sps:.1f}", f"{gflops:.1f}", f"{gflops / peak:.0%}"))
        result[name] = {"samples_per_s": sps, "gflops": gflops, "fraction_of_peak": gflops / peak}
    rows.append(("fp32 matmul peak (torch.mm)", "-", f"{peak:.1f}", "100%"))
    print(f"inference, {params / 1e6:.0f} M parameters, batch {bs}, {dev}, "
          f"{torch.get_num_threads()} threads ({cores()} cores), model built in {build_s:.1f} s")
    print(table(rows, ("what", "samples/s", "GFLOP/s", "of peak")))
    frac = result["forward (reconstruct)"]["fraction_of_peak"]
    print(f"target: forward >= 50% of the matmul peak: {'met' if frac >= 0.5 else 'NOT met'} "
          f"({frac:.0%}); peak RSS {peak_rss_mib():.0f} MiB")
    result["peak_rss_mib"] = peak_rss_mib()
    save("infer", result)


if __name__ == "__main__":
    main()
