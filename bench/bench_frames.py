"""ae-train --arch frames against its floor and against the DCASE baseline's training loop.

    python bench/bench_frames.py                 # 100 clips of 1 x 128 x 313 (30,900 windows)
    python bench/bench_frames.py --small         # tiny sizes: a check of the script itself
    python bench/bench_frames.py --device cuda   # every row on the GPU (default: auto)

One synthetic features file (dB-like clips, 10 s at the DCASE front end: 128 bands x 313
frames), windows of 5 frames (640 values), the DCASE 2020 layers (Linear+BatchNorm+ReLU,
128 x 4, bottleneck 8, mirrored), Adam lr 1e-3. Every row trains the same number of epochs
on the same windows and reports its best epoch's windows/s (training steps only: no
validation, no start-up), each row in its own subprocess, the rows taken in turn --rounds
times (a slow minute of a shared machine hits them alike), the fastest run kept:

  floor          aekit's step (aekit.train.loop.train_step: the frames model, the step
                 aekit.train.faststep.applies picks for it: at 0.27 M parameters the plain
                 one, one fused Adam over all tensors) on windows already gathered into one
                 contiguous tensor [windows, 640], batches as slices of it, batch 512: no
                 data path at all
  ae-train/memory  the ae-train command, --data memory, batch 512 (its default): windows
                 cut from the clips in memory at each batch; windows/s of its log
  ae-train/stream  the same with --data stream (blocks of clips read from HDF5 on a thread)
  dcase2023-loop  the official DCASE 2023-2025 Task 2 PyTorch baseline's training loop,
                 re-implemented: the pre-cut windows as one float64 array in a Dataset whose
                 item is (window, label, section one-hot, file name, index), a Subset of it,
                 torch DataLoader(batch_size=256, shuffle=True) (its baseline.yaml: batch
                 256, 100 epochs, lr 1e-3), its AENet layers (BatchNorm momentum 0.01, eps
                 1e-3), optim.Adam, torch.autograd.set_detect_anomaly(True) as its train()
                 sets it, per-window MSE reduced as it does, float(loss) and loss.item()
                 every step
  dcase2020-loop  the DCASE 2020 baseline's fit (Keras: batch 512, shuffle) in PyTorch: a
                 DataLoader(batch_size=512, shuffle=True) over a float32 array of the
                 pre-cut windows, the same layers, optim.Adam, loss.item() every step, no
                 anomaly detection: a lean peer

Targets (CPU): ae-train >= 0.8x the floor and >= 3x the dcase2023 loop's windows/s.
The hardware's own bound is printed under the table: the step's matrix products
(forward, weight and input gradients) at the fp32 matmul peak measured in the same run,
and the share of it the floor and ae-train reach (the rest of a step: BatchNorm,
activations, the loss, Adam, and products too small to run at the peak).
Threads: every row uses the same torch thread count (--threads, default aekit's automatic
choice, aekit.system.threads). The device every row ran on is printed with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak, save, table  # noqa: E402

FULL = dict(clips=100, mels=128, frames=313, hidden=(128, 128, 128, 128), latent=8, epochs=2)
SMALL = dict(clips=6, mels=16, frames=24, hidden=(16, 16), latent=4, epochs=1)
CONTEXT = 5
ROWS = ["floor", "ae-train/memory", "ae-train/stream", "dcase2023-loop", "dcase2020-loop"]
TARGET_FLOOR, TARGET_PEER = 0.8, 3.0


def write_features(path: Path, cfg: dict, seed: int = 0) -> None:
    """dB-like clips [N, 1, mels, frames] (low-rank structure plus noise) in an aekit file."""
    import numpy as np

    from aekit.data import store

    rng = np.random.default_rng(seed)
    n, m, t = cfg["clips"], cfg["mels"], cfg["frames"]
    tmpl = rng.normal(0, 15, size=(3, m * t))
    x = (-40 + rng.random((n, 3)) @ tmpl + rng.normal(0, 3, size=(n, m * t)))
    x = x.astype(np.float32).reshape(n, 1, m, t)
    hop = 512
    params = dict(sample_rate=16000, num_samples=(t - 1) * hop, n_fft=1024, hop_length=hop,
                  n_mels=m, top_db=80.0, f_min=0.0, f_max=None, window="hann", power=2.0,
                  mel_scale="htk", channels=1, channel_policy="first")
    ids = [f"clip{i:05d}" for i in range(n)]
    w = store.FeatureWriter(str(path), params, (1, m, t))
    w.append(x, ids, [f"/data/{i}.wav" for i in ids], {k: np.zeros(n) for k in store.PER_CLIP})
    w.close()


def _windows(path: str, dtype=None, frame_major: bool = False):
    """Every window of every clip, pre-cut: [clips x (frames - 4), mels x 5], in aekit's
    window layout (band by band, the frames within each band) or, ``frame_major``, in the
    DCASE baselines' (frame by frame: ``vector_array[:, n_mels * t: n_mels * (t + 1)]``)."""
    import torch

    from aekit.data.store import FeatureFile

    with FeatureFile(path) as ff:
        import numpy as np

        x = torch.from_numpy(ff.read(np.arange(len(ff.ids))))  # [N, 1, M, T]
    w = x.unfold(3, CONTEXT, 1).permute(0, 3, 1, 2, 4)  # [N, W, 1, M, 5]
    if frame_major:
        w = w.permute(0, 1, 4, 2, 3)  # [N, W, 5, 1, M]
    w = w.reshape(w.shape[0] * w.shape[1], -1).contiguous()
    return w if dtype is None else w.to(dtype)


def step_flops_per_window(cfg: dict) -> int:
    """FLOPs of the matrix products of one training step, per window: each Linear layer's
    forward, weight gradient and input gradient (none for the first layer: the input needs
    no gradient), 2 x in x out each. BatchNorm, activations, loss and Adam not counted."""
    dims = [cfg["mels"] * CONTEXT, *cfg["hidden"], cfg["latent"]]
    layers = list(zip(dims[:-1], dims[1:])) + list(zip(dims[::-1][:-1], dims[::-1][1:]))
    macs = sum(a * b for a, b in layers)
    return 2 * (3 * macs - dims[0] * dims[1])


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _epochs(dev, epochs: int, one_epoch) -> list[float]:
    """Windows/s of each epoch of ``one_epoch()`` (which returns the windows it trained)."""
    rates = []
    for _ in range(epochs):
        _sync(dev)
        t0 = time.perf_counter()
        n = one_epoch()
        _sync(dev)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def row_floor(path: str, cfg: dict, dev) -> list[float]:
    import torch

    from aekit.train import faststep
    from aekit.train import loop as tr
    from aekit.models.frames import FramesConfig
    from aekit.models.registry import build_model

    torch.manual_seed(0)
    x = _windows(path)
    mean, std = x.mean(), x.std()
    x = ((x - mean) / std)[torch.randperm(x.shape[0])].contiguous().to(dev)  # shuffled once
    model = build_model(FramesConfig(input_shape=(1, cfg["mels"], cfg["frames"]),
                                     hidden=cfg["hidden"], latent=cfg["latent"],
                                     context=CONTEXT), dev)
    opt = tr.make_optimizer(model.parameters(), 1e-3)
    faststep.attach(model, opt, faststep.applies(False, model))
    amp = tr.autocast_for(dev, "fp32")
    model.train()
    n, batch = x.shape[0], 512
    last = n - (n % batch == 1)  # as ae-train: no batch of one row through BatchNorm

    def epoch() -> int:
        for s in range(0, last, batch):
            tr.train_step(model, opt, x[s:min(s + batch, last)], None, amp)
        return last

    return _epochs(dev, cfg["epochs"], epoch)


def _aenet(input_dim: int, hidden, latent: int):
    """The DCASE baseline's AENet layers at these widths (BatchNorm momentum 0.01, eps 1e-3)."""
    from torch import nn

    def block(a, b):
        return [nn.Linear(a, b), nn.BatchNorm1d(b, momentum=0.01, eps=1e-03), nn.ReLU()]

    class AENet(nn.Module):
        def __init__(self):
            super().__init__()
            dims = [input_dim, *hidden, latent]
            enc = [m for a, b in zip(dims[:-1], dims[1:]) for m in block(a, b)]
            back = dims[::-1]
            dec = [m for a, b in zip(back[:-2], back[1:-1]) for m in block(a, b)]
            self.encoder = nn.Sequential(*enc)
            self.decoder = nn.Sequential(*dec, nn.Linear(back[-2], back[-1]))
            self.input_dim = input_dim

        def forward(self, x):
            z = self.encoder(x.view(-1, self.input_dim))
            return self.decoder(z), z

    return AENet()


def row_dcase2023(path: str, cfg: dict, dev) -> list[float]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset, Subset

    torch.manual_seed(0)
    data = _windows(path, torch.float64, frame_major=True).numpy()  # float64, as the baseline
    per_file = cfg["frames"] - CONTEXT + 1

    class Windows(Dataset):  # the item the baseline's loader returns
        def __init__(self):
            self.data, self.y_true = data, np.zeros(cfg["clips"])
            self.condition = np.zeros((len(data), 1))
            self.condition[:, 0] = 1.0
            self.basenames = [f"section_00_source_train_normal_{i:04d}.wav"
                              for i in range(cfg["clips"])]

        def __getitem__(self, i):
            return (self.data[i], self.y_true[i // per_file], self.condition[i],
                    self.basenames[i // per_file], i)

        def __len__(self):
            return len(self.data)

    loader = DataLoader(Subset(Windows(), range(len(data))), batch_size=256, shuffle=True)
    model = _aenet(data.shape[1], cfg["hidden"], cfg["latent"]).to(dev)
    opt = torch.optim.Adam([{"params": model.parameters()}], lr=1e-3)
    torch.autograd.set_detect_anomaly(True)  # as the baseline's train() sets it
    model.train()

    def epoch() -> int:
        seen, train_loss, source = 0, 0.0, 0.0
        for batch in loader:
            x = batch[0].to(dev).float()
            if x.shape[0] <= 1:
                continue
            names = batch[3]
            is_target = [("target" in n) for n in names]
            is_source = np.logical_not(is_target).tolist()
            n_source = is_source.count(True)
            opt.zero_grad()
            recon, _ = model(x)
            score = F.mse_loss(recon, x.view(recon.shape), reduction="none").mean(1)
            loss = torch.sum(score) / len(score)
            source_loss = torch.sum(score[is_source]) / max(1, n_source)
            loss.backward()
            opt.step()
            train_loss += float(loss)
            source += float(source_loss)
            loss.item()
            seen += x.shape[0]
        return seen

    return _epochs(dev, cfg["epochs"], epoch)


def row_dcase2020(path: str, cfg: dict, dev) -> list[float]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Dataset

    torch.manual_seed(0)
    data = _windows(path, frame_major=True).numpy()

    class Windows(Dataset):
        def __getitem__(self, i):
            return data[i]

        def __len__(self):
            return len(data)

    loader = DataLoader(Windows(), batch_size=512, shuffle=True)
    model = _aenet(data.shape[1], cfg["hidden"], cfg["latent"]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def epoch() -> int:
        seen = 0
        for x in loader:
            x = x.to(dev)
            if x.shape[0] <= 1:
                continue
            recon, _ = model(x)
            loss = F.mse_loss(recon, x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss.item()
            seen += x.shape[0]
        return seen

    return _epochs(dev, cfg["epochs"], epoch)


def row_ae_train(path: str, cfg: dict, device: str, mode: str, threads: int) -> list[float]:
    """The ae-train command itself; windows/s per epoch from its --log."""
    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "ae-train"
    with tempfile.TemporaryDirectory(prefix="aekit-bench-frames-") as d:
        log = Path(d) / "log.csv"
        cmd = [str(exe) if exe.exists() else "ae-train", path, "-o", str(Path(d) / "m.pt"),
               "--arch", "frames", "--hidden", ",".join(map(str, cfg["hidden"])),
               "--latent", str(cfg["latent"]), "--context", str(CONTEXT),
               "--epochs", str(cfg["epochs"]), "--schedule", "constant", "--data", mode,
               "--device", device, "--threads", str(threads), "--log", str(log), "-q"]
        subprocess.run(cmd, check=True)
        with open(log, newline="") as fh:
            return [float(r["samples_per_s"]) for r in csv.DictReader(fh)]


def run_row(name: str, path: str, cfg: dict, device: str, threads: int) -> dict:
    """One row in this process: {"name", "device", "threads", "rates": windows/s per epoch}."""
    import torch

    from aekit.system.device import resolve_device

    torch.set_num_threads(threads)
    dev = resolve_device(device)
    if name.startswith("ae-train/"):
        rates = row_ae_train(path, cfg, str(dev), name.split("/", 1)[1], threads)
    else:
        fn = {"floor": row_floor, "dcase2023-loop": row_dcase2023,
              "dcase2020-loop": row_dcase2020}[name]
        rates = fn(path, cfg, dev)
    return {"name": name, "device": str(dev), "threads": threads, "rates": rates,
            "windows_per_s": max(rates)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes: check the script quickly")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of every row (default: aekit.system.threads.auto_threads)")
    ap.add_argument("--clips", type=int, default=None, help="synthetic clips (default 100)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every row (default 2)")
    ap.add_argument("--rounds", type=int, default=None, help="rows in turn, best kept (default 2)")
    ap.add_argument("--rows", default=",".join(ROWS), help=argparse.SUPPRESS)
    ap.add_argument("--one", nargs=2, metavar=("ROW", "FILE"), help=argparse.SUPPRESS)
    ap.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = dict(SMALL if args.small else FULL)
    cfg.update({k: v for k, v in (("clips", args.clips), ("epochs", args.epochs)) if v})
    from aekit.system.device import resolve_device
    from aekit.system.threads import auto_threads

    threads = args.threads or auto_threads()[0]
    device = str(resolve_device(args.device))  # refused here, once, when not available
    if args.one:
        print(json.dumps(run_row(args.one[0], args.one[1], cfg, device, threads)))
        return 0
    if args.peak:
        import torch

        torch.set_num_threads(threads)
        print(json.dumps({"gflops": matmul_peak("float32", 0.5 if args.small else 2.0, device)}))
        return 0
    rounds = args.rounds or (1 if args.small else 2)
    names = [n for n in args.rows.split(",") if n]
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="aekit-bench-frames-") as d:
        path = str(Path(d) / "frames.h5")
        write_features(Path(path), cfg)
        runs: dict[str, list[dict]] = {n: [] for n in names}
        peaks = []
        for _ in range(rounds):
            peak_cmd = [sys.executable, os.path.abspath(__file__), "--peak", "--device", device,
                        "--threads", str(threads)] + (["--small"] if args.small else [])
            out = subprocess.run(peak_cmd, check=True, capture_output=True, text=True).stdout
            peaks.append(json.loads(out.strip().splitlines()[-1])["gflops"])
            for n in names:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", n, path,
                       "--device", device, "--threads", str(threads),
                       "--clips", str(cfg["clips"]), "--epochs", str(cfg["epochs"])]
                cmd += ["--small"] if args.small else []
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[n].append(json.loads(out.strip().splitlines()[-1]))
    best = {n: max(runs[n], key=lambda r: r["windows_per_s"]) for n in names}
    windows = cfg["clips"] * (cfg["frames"] - CONTEXT + 1)
    print(f"ae-train --arch frames: {cfg['clips']} clips of 1x{cfg['mels']}x{cfg['frames']}, "
          f"{windows} windows of {CONTEXT} frames, layers {cfg['mels'] * CONTEXT}->"
          f"{','.join(map(str, cfg['hidden']))}->{cfg['latent']} mirrored, {cfg['epochs']} "
          f"epoch(s) per row, best epoch of {rounds} round(s); device {device}, "
          f"{threads} thread(s)")
    floor = best.get("floor", {}).get("windows_per_s")
    peer = best.get("dcase2023-loop", {}).get("windows_per_s")
    rows = []
    for n in names:
        r = best[n]
        w = r["windows_per_s"]
        rows.append((n, r["device"], f"{w:,.0f}",
                     f"{w / floor:.2f}x" if floor else "-", f"{w / peer:.2f}x" if peer else "-"))
    print(table(rows, ("row", "device", "windows/s", "vs floor", "vs dcase2023 loop")))
    verdicts = []
    for n in ("ae-train/memory", "ae-train/stream"):
        if n in best and floor and peer:
            w = best[n]["windows_per_s"]
            verdicts.append(f"{n}: {w / floor:.2f}x floor (target >= {TARGET_FLOOR}x: "
                            f"{'met' if w / floor >= TARGET_FLOOR else 'not met'}), "
                            f"{w / peer:.2f}x the dcase2023 loop (target >= {TARGET_PEER}x: "
                            f"{'met' if w / peer >= TARGET_PEER else 'not met'})")
    for v in verdicts:
        print(v)
    flops, peak = step_flops_per_window(cfg), max(peaks)
    bound = peak * 1e9 / flops
    print(f"matrix products of a step: {flops / 1e6:.2f} MFLOP per window; at the matmul peak "
          f"measured in this run ({peak:.0f} GFLOP/s, fp32 square) {bound:,.0f} windows/s: "
          + ", ".join(f"{n} {best[n]['windows_per_s'] / bound:.2f}x" for n in names
                      if n in ("floor", "ae-train/memory")) + " of that bound")
    print("windows/s of every run (best kept): " + "; ".join(
        f"{n} " + ", ".join(f"{r['windows_per_s']:.0f}" for r in runs[n]) for n in names))
    print(f"({time.time() - t_start:.0f} s in all)")
    save("frames", {"config": {k: list(v) if isinstance(v, tuple) else v
                               for k, v in cfg.items()},
                    "device": device, "threads": threads, "runs": runs,
                    "matmul_peak_gflops": peaks, "step_flops_per_window": flops})
    return 0


if __name__ == "__main__":
    sys.exit(main())
