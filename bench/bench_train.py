"""ae-train speed against the tutorial's own training loop, measured side by side in one run.

    python bench/bench_train.py            # full-size improved model, batch 25, CPU (~5-6 min)
    python bench/bench_train.py --small    # a quick check of the script itself
    python bench/bench_train.py --device cuda   # every row on the GPU (default: auto)

Each configuration runs in its own subprocess (fresh memory, its own peak RSS) on the same
synthetic in-memory features (2 x 32 x 391 dB-like values). Printed as ratios:
samples/s against the tutorial's loop, achieved GFLOP/s (6 x parameters x samples/s) against
a matmul peak measured in the same run, and peak RSS.

  tutorial       the tutorial as written: its nn.Module, DataLoader(TensorDataset,
                 batch_size=25, shuffle=True), Adam(lr=1e-3) with torch's defaults,
                 x = x.view(B, -1); out, _ = model(x); loss = mse(out, x); zero_grad;
                 backward; step
  ae-train       aekit.train.loop.train_step as ae-train runs it: rows pre-loaded as one tensor
                 indexed by the epoch's permutation (no DataLoader), fused Adam run per
                 parameter inside backward at this size (aekit.train.faststep.applies;
                 StepInBackward: each Linear's weight gradient computed into one
                 scratch buffer reused by every layer and step, so no gradient is
                 allocated), 2 MiB pages (aekit.system.hostmem), no per-step host sync
  ae-train/plain-step  the same with zero_grad + backward + opt.step() (ablation; as ae-train
                 under DDP): each step's gradients allocated afresh, in 2 MiB pages
  ae-train/foreach   plain step with the multi-tensor Adam instead of the fused one (ablation)
  ae-train/4k-pages  ae-train without its 2 MiB-page setting (aekit.system.hostmem; ablation):
                 each step's gradients faulted in 4 KiB page by 4 KiB page
  ae-train/bf16  ae-train with --precision bf16 (autocast), where the CPU supports it

Roofline: at batch 25 a step moves far more bytes than it does FLOPs per byte; an fp32 Adam
step reads the weights forward (4 bytes x P) and backward (4P), writes the gradients (4P),
and Adam reads weight, gradient and two moments (16P) and writes weight and moments (12P):
40 bytes per parameter per step, activations (batch x width) negligible. The floor is that
traffic over a memory bandwidth measured in the same run (torch.add of three 256 MB fp32
arrays, best of 5); "of roofline" = floor / measured step time.
Every configuration runs --rounds times (default 2), the rounds in turn, and each keeps its
fastest run: this machine's speed drifts over minutes (the tutorial's own step took 5.1 to
7.1 s in runs an hour apart), and taking the rows in turn lets a slow minute hit them alike.
Target: ae-train >= 3.5x the tutorial's samples/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak  # noqa: E402

FULL = dict(shape=(2, 32, 391), hidden=(8224, 2056, 1024, 512), latent=256)
SMALL = dict(shape=(2, 32, 40), hidden=(512, 256, 128, 64), latent=32)


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def synthetic(n: int, shape, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (-40 + 20 * torch.randn(n, *shape, generator=g)).clamp_min(-100)  # dB-like [N, C, M, T]


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


BYTES_PER_PARAM = 40  # fp32 Adam step: see the module docstring
TARGET = 3.5


def bandwidth_gbs(mb: int = 256, repeat: int = 5, device: str = "cpu") -> float:
    """Memory bandwidth (GB/s) of c = a + b over three ``mb`` MB fp32 arrays, all threads."""
    import torch

    dev = torch.device(device)
    n = mb * 2**20 // 4
    a, b, c = torch.ones(n, device=dev), torch.ones(n, device=dev), torch.empty(n, device=dev)
    torch.add(a, b, out=c)
    _sync(dev)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        torch.add(a, b, out=c)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 3 * n * 4 / best / 1e9


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (Linux: /proc/cpuinfo flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: let the row run
    return "avx512_bf16" in flags or "amx_bf16" in flags


def tutorial_model(cfg):
    """The tutorial's improved autoencoder, written as its listing does."""
    from torch import nn

    class AutoEncoder(nn.Module):
        def __init__(self, input_dim, hidden, latent):
            super().__init__()
            enc, dims = [], [input_dim, *hidden, latent]
            for a, b in zip(dims[:-1], dims[1:]):
                enc += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(0.1)]
            dec, back = [], dims[::-1]
            for a, b in zip(back[:-2], back[1:-1]):
                dec += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(0.1)]
            dec.append(nn.Linear(back[-2], back[-1]))
            self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

        def forward(self, x):
            z = self.encoder(x)
            return self.decoder(z), z

    c, m, t = cfg["shape"]
    return AutoEncoder(c * m * t, cfg["hidden"], cfg["latent"])


def run_one(name: str, cfg, warmup: int, steps: int, n: int, device: str = "cpu") -> dict:
    import torch

    dev = torch.device(device)
    if name.startswith("ae-train") and name != "ae-train/4k-pages" and dev.type == "cpu":
        from aekit.system import hostmem

        hostmem.for_cpu_training()  # first, as ae-train's setup does on the CPU
    torch.manual_seed(0)
    x = synthetic(n, cfg["shape"])
    batch = 25
    if name == "tutorial":
        from torch import nn
        from torch.utils.data import DataLoader, TensorDataset

        model = tutorial_model(cfg).to(dev)
        params = sum(p.numel() for p in model.parameters())
        loader = DataLoader(TensorDataset(x), batch_size=batch, shuffle=True)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        mse = nn.MSELoss()

        def batches():
            while True:
                for (xb,) in loader:
                    yield xb

        it = batches()

        def step():
            xb = next(it).to(dev)
            xb = xb.view(xb.size(0), -1)
            out, _ = model(xb)
            loss = mse(out, xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return xb.size(0)
    else:
        from aekit.train import faststep
        from aekit.train import loop as tr
        from aekit.train.batches import MemorySource, batch_sizes, epoch_order
        from aekit.models.modelfile import Normalizer
        from aekit.models.mlp import AEConfig
        from aekit.models.base import count_parameters
        from aekit.models.registry import build_model

        precision = "bf16" if name.endswith("bf16") else "fp32"
        model = build_model(AEConfig(arch="improved", input_shape=cfg["shape"],
                                     hidden=cfg["hidden"], latent=cfg["latent"]), dev)
        params = count_parameters(model)
        if name.endswith("foreach"):
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
        else:
            opt = tr.make_optimizer(model.parameters(), 1e-3)
        in_backward = (name in ("ae-train", "ae-train/bf16", "ae-train/4k-pages")
                       and faststep.applies(False, model))  # ae-train's switch (--small: plain)
        faststep.attach(model, opt, in_backward)
        norm = Normalizer("none")
        src = MemorySource.from_tensor(x, norm, dev)
        src.prepare()
        amp = tr.autocast_for(dev, precision)
        sizes = batch_sizes(n, batch, balanced=False)

        def batches():
            epoch = 0
            while True:
                yield from src.batches(epoch_order(n, 0, epoch), sizes)
                epoch += 1

        it = batches()

        def step():
            xb = next(it)
            tr.train_step(model, opt, xb, None, amp)
            return xb.shape[0]

    model.train()
    for _ in range(warmup):
        step()
    import resource

    _sync(dev)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    rows = sum(step() for _ in range(steps))
    _sync(dev)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {"name": name, "device": str(dev), "samples_per_s": rows / dt, "step_s": dt / steps, "params": params,
            "peak_rss_mb": peak_rss_mb(),
            "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
            "user_s_per_step": (r1.ru_utime - r0.ru_utime) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small widths: check the script quickly")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=100, help="synthetic clips in memory")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when present), cpu, cuda, cuda:N: where every row runs")
    ap.add_argument("--rounds", type=int, default=2,
                    help="run every configuration this many times, in turn, and keep each "
                         "one's fastest run (the machine's speed drifts over minutes)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cfg = SMALL if args.small else FULL
    from aekit.system.device import resolve_device

    device = str(resolve_device(args.device))  # refused here when not available

    if args.peak:
        print(json.dumps({"peak": matmul_peak(args.peak, device=device)}))
        return
    if args.bandwidth:
        print(json.dumps({"bw": bandwidth_gbs(device=device)}))
        return
    if args.one:
        print(json.dumps(run_one(args.one, cfg, args.warmup, args.steps, args.rows, device)))
        return

    import torch

    def sub(*extra) -> dict:
        cmd = [sys.executable, os.path.abspath(__file__), *extra, "--warmup", str(args.warmup),
               "--steps", str(args.steps), "--rows", str(args.rows), "--device", device]
        cmd += ["--small"] if args.small else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    on_gpu = torch.device(device).type == "cuda"
    bf16_ok = not args.no_bf16 and (torch.cuda.is_bf16_supported() if on_gpu else
                                     torch.backends.mkldnn.is_available() and native_bf16())
    if not bf16_ok and not args.no_bf16 and not on_gpu:
        print("(no bf16 row: this CPU has no native bf16 instructions (avx512_bf16, amx_bf16), "
              "where bf16 matmuls are emulated and run far slower than fp32)")
    names = (["tutorial", "ae-train", "ae-train/plain-step", "ae-train/foreach"]
             + ([] if on_gpu else ["ae-train/4k-pages"])  # host pages: a CPU-only setting
             + (["ae-train/bf16"] if bf16_ok else []))
    t0 = time.time()
    bw = sub("--bandwidth")["bw"]
    peak32 = sub("--peak", "float32")["peak"]
    peak16 = sub("--peak", "bfloat16")["peak"] if bf16_ok else float("nan")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for _ in range(max(1, args.rounds)):  # rounds in turn: a slow minute hits every row alike
        for n in names:
            runs[n].append(sub("--one", n))
    results = [max(runs[n], key=lambda r: r["samples_per_s"]) for n in names]
    spread = {n: [r["samples_per_s"] for r in runs[n]] for n in names}
    base = results[0]["samples_per_s"]
    c, m, t = cfg["shape"]
    widths = ",".join(map(str, cfg["hidden"]))
    print(f"ae-train benchmark: improved model {c}x{m}x{t} -> {widths} -> {cfg['latent']}, "
          f"{results[0]['params'] / 1e6:.1f} M parameters, batch 25, device "
          f"{', '.join(sorted({r['device'] for r in results}))}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    step_bytes = BYTES_PER_PARAM * results[0]["params"]
    floor_s = step_bytes / (bw * 1e9)
    print(f"matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s (2048^3)")
    print(f"memory traffic: {step_bytes / 1e9:.1f} GB per fp32 Adam step "
          f"({BYTES_PER_PARAM} bytes x {results[0]['params'] / 1e6:.0f} M parameters); "
          f"bandwidth {bw:.1f} GB/s (c = a + b, 256 MB arrays) -> roofline {floor_s:.3f} s/step")
    print(f"{'config':20s} {'samples/s':>10s} {'vs tutorial':>12s} {'s/step':>8s} "
          f"{'GFLOP/s':>8s} {'of peak':>8s} {'of roofline':>12s} {'peak RSS':>10s} "
          f"{'faults/step':>12s} {'kernel s/step':>14s}")
    for r in results:
        gflops = 6 * r["params"] * r["samples_per_s"] / 1e9
        peak = peak16 if r["name"].endswith("bf16") else peak32
        print(f"{r['name']:20s} {r['samples_per_s']:10.1f} {r['samples_per_s'] / base:11.2f}x "
              f"{r['step_s']:8.3f} {gflops:8.1f} {gflops / peak:8.0%} "
              f"{floor_s / r['step_s']:12.0%} {r['peak_rss_mb'] / 1024:8.2f} GB "
              f"{r['faults_per_step']:12.0f} {r['sys_s_per_step']:14.2f}")
    ours = next(r for r in results if r["name"] == "ae-train")["samples_per_s"] / base
    print(f"ae-train vs the tutorial's loop: {ours:.2f}x (target >= {TARGET}x: "
          f"{'met' if ours >= TARGET else 'not met'}); bf16 rows use the bf16 matmul peak, "
          "and their roofline is the fp32 one (the weights and Adam stay fp32)")
    print("samples/s of every run (best kept): " + "; ".join(
        f"{n} " + ", ".join(f"{v:.1f}" for v in spread[n]) for n in names))
    print(f"({args.warmup} warm-up + {args.steps} timed steps each, {args.rounds} rounds, "
          f"{time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
