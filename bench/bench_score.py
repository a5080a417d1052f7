"""ae-score against ae-featurize on the same files: a directory, and a list streamed on stdin.

DCASE-like data made here: 10-second mono 16 kHz WAV clips, the dcase2020 feature preset
(64 Mel bands, 313 frames) and a frame-window model (--arch frames, about 0.3 M
parameters; built, not trained: a trained one costs the same). In one run, each command as
a user runs it (a process, all cores):
  * ae-featurize DIR -o f.h5                     decode + features + HDF5 (checksums)
  * ae-score MODEL DIR -o s.csv                  decode + features + model, CSV rows
  * cat list | ae-score MODEL - -o s.csv         the same files listed on a pipe (streamed)
files/s are marginal, start-up cancelled (the whole set's time minus that of its first
quarter, both measured), as in bench_featurize. Also timed: the model's forward pass alone
on clips in memory (clips/s, all threads). ae-score does ae-featurize's work (no HDF5) plus
that forward pass, so its floor is 1 / (1/featurize + 1/forward) files/s;
ae-score runs with --score mse (the floor is the MSE forward pass: --score auto would pick
the Mahalanobis distance for a frames model). Printed:
files/s, the ratios to ae-featurize and to that floor (target >= 0.8), and the stdin
list's ratio to the directory (target >= 0.9: streaming costs nothing). --many N
(default 10000, 0 skips) adds a row: the peak RSS of ae-score reading N/2 and N inputs
listed on a pipe (the clips listed again), target: flat (the larger within 5 %). (The
heap warms up over the first 1,000 to 2,000 inputs: 750 MiB after 100, about 880 after
1,000, then level; hence N/2, not N/10.)
Usage: python bench/bench_score.py [--clips 400] [--many 10000] [--device auto] [--jobs N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cores, save, table  # noqa: E402

SR = 16000
PRESET = "dcase2020"
TARGETS = {"score_vs_floor": 0.8, "stdin_vs_dir": 0.9, "rss_growth": 0.05}
BIN = Path(sys.executable).parent


def make_clips(d: Path, n: int, seconds: float = 10.0, seed: int = 0) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    paths = []
    for i in range(n):
        p = d / f"clip_{i:05d}.wav"
        if not p.exists():
            x = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) \
                + 0.05 * rng.standard_normal(t.size)
            sf.write(str(p), x.astype(np.float32), SR, subtype="PCM_16")
        paths.append(p)
    return paths


def make_model(path: Path) -> int:
    import torch

    from aekit.audio.features import MelParams
    from aekit.models.modelfile import make_normalizer, save_model
    from aekit.models.base import count_parameters
    from aekit.models.registry import build_model, make_config

    params = MelParams.from_preset(PRESET)
    torch.manual_seed(0)
    model = build_model(make_config("frames", tuple(params.clip_shape))).eval()
    save_model(path, model, make_normalizer(model, "global"), params.to_attrs())
    return count_parameters(model)


def forward_rate(model_path: Path, device: str, batch: int = 64) -> float:
    """Clips/s of the model's scoring forward pass alone (aekit.evaluate.scoring.score_features on
    batches of ``batch`` clips in memory, all threads): the other half of ae-score's work."""
    from common import best_of

    import aekit
    from aekit.system.device import resolve_device
    from aekit.evaluate.scoring import score_features

    model = aekit.load_model(model_path, resolve_device(device))
    x = np.random.default_rng(0).normal(-40, 10, (4 * batch, *model.input_shape))
    x = x.astype(np.float32)
    score_features(model, x[:batch], batch)  # warm up
    return 4 * batch / best_of(lambda: score_features(model, x, batch), 3)


def run(cmd: list[str], stdin_text: str | None = None) -> float:
    """Wall time of one command; a list is written to its stdin through a pipe."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin_text is not None else None,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if stdin_text is not None:
        writer = threading.Thread(target=lambda: (p.stdin.write(stdin_text), p.stdin.close()))
        writer.start()
    err = p.stderr.read()
    if p.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    if stdin_text is not None:
        writer.join()
    return time.perf_counter() - t


def marginal(fn, n_all: int, n_quarter: int) -> dict:
    t_q, t_all = fn("quarter"), fn("all")
    return {"files_per_s": (n_all - n_quarter) / max(t_all - t_q, 1e-9), "whole_s": t_all,
            "startup_s": max(0.0, t_q - (t_all - t_q) * n_quarter / (n_all - n_quarter))}


def peak_rss(cmd: list[str], listing: list[str]) -> dict:
    """Peak RSS (MiB, VmHWM sampled every 50 ms from /proc) of ae-score reading ``listing``
    on a pipe, and its files/s."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, text=True)
    text = "".join(f"{s}\n" for s in listing)
    threading.Thread(target=lambda: (p.stdin.write(text), p.stdin.close()), daemon=True).start()
    status = Path(f"/proc/{p.pid}/status")
    peak = 0.0
    t = time.perf_counter()
    while p.poll() is None:
        try:
            kb = next(int(x.split()[1]) for x in status.read_text().splitlines()
                      if x.startswith("VmHWM:"))
            peak = max(peak, kb / 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.05)
    secs = time.perf_counter() - t
    if p.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return {"n": len(listing), "peak_mib": peak, "files_per_s": len(listing) / secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=400)
    ap.add_argument("--many", type=int, default=10000)
    ap.add_argument("--device", default="auto", help="ae-score's --device (auto: CUDA if any)")
    ap.add_argument("--jobs", type=int, default=None, help="workers (default: all cores)")
    ap.add_argument("--keep", type=Path, default=None, help="keep the data in this directory")
    args = ap.parse_args()
    jobs = ["-j", str(args.jobs)] if args.jobs else []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        clips = make_clips(root / "all", args.clips)
        quarter = root / "quarter"
        quarter.mkdir(exist_ok=True)
        nq = max(1, len(clips) // 4)
        for c in clips[:nq]:
            if not (quarter / c.name).exists():
                (quarter / c.name).symlink_to(c)
        sets = {"all": (root / "all", [str(c) for c in clips]),
                "quarter": (quarter, [str(quarter / c.name) for c in clips[:nq]])}
        model = root / "model.safetensors"
        n_params = make_model(model)
        out = Path(tmp)

        def featurize(which):
            return run([str(BIN / "ae-featurize"), str(sets[which][0]), "-o",
                        str(out / f"f_{which}.h5"), "--preset", PRESET, "-q", *jobs])

        def score_dir(which):
            return run([str(BIN / "ae-score"), str(model), str(sets[which][0]), "-o",
                        str(out / f"s_{which}.csv"), "--device", args.device, "--score", "mse", "-q", *jobs])

        def score_stdin(which):
            return run([str(BIN / "ae-score"), str(model), "-", "-o", str(out / "s_list.csv"),
                        "--device", args.device, "--score", "mse", "-q", *jobs],
                       stdin_text="".join(f"{p}\n" for p in sets[which][1]))

        g = forward_rate(model, args.device)
        score_dir("quarter")  # warm the page cache and the imports
        res = {"featurize": marginal(featurize, len(clips), nq),
               "score_dir": marginal(score_dir, len(clips), nq),
               "score_stdin": marginal(score_stdin, len(clips), nq)}
        many = None
        if args.many:
            listing = [str(clips[i % len(clips)]) for i in range(args.many)]
            cmd = [str(BIN / "ae-score"), str(model), "-", "--device", args.device, "--score", "mse", "-q", *jobs]
            many = {"half": peak_rss(cmd, listing[:max(1, args.many // 2)]),
                    "all": peak_rss(cmd, listing)}
    f = res["featurize"]["files_per_s"]
    floor = 1 / (1 / f + 1 / g)  # both halves of the work, each at the machine's full rate
    sd, ss = res["score_dir"]["files_per_s"], res["score_stdin"]["files_per_s"]
    rows = [("ae-featurize (dir -> HDF5)", f"{f:.1f}", "1.00x", "-", "-"),
            ("model forward alone (in memory)", f"{g:.1f}", "-", "-", "-"),
            ("floor: featurize + forward", f"{floor:.1f}", f"{floor / f:.2f}x", "1.00x", "-"),
            ("ae-score (dir)", f"{sd:.1f}", f"{sd / f:.2f}x", f"{sd / floor:.2f}x", "-"),
            ("ae-score (list on a pipe)", f"{ss:.1f}", f"{ss / f:.2f}x", f"{ss / floor:.2f}x",
             f"{ss / sd:.2f}x")]
    print(f"ae-score vs ae-featurize: {len(clips)} clips of 10 s mono, preset {PRESET}, "
          f"frames model {n_params / 1e6:.2f} M parameters, device {args.device}, "
          f"{args.jobs or cores()} job(s) ({cores()} cores); marginal files/s")
    print(table(rows, ("what", "files/s", "vs featurize", "vs floor", "list vs dir")))
    r1 = sd / floor
    r2 = ss / sd
    result = {"clips": len(clips), "preset": PRESET, "parameters": n_params,
              "device": args.device, "cores": cores(), **res,
              "forward_clips_per_s": g, "floor_files_per_s": floor,
              "score_vs_featurize": sd / f, "score_vs_floor": r1, "stdin_vs_dir": r2}
    print(f"target: ae-score >= {TARGETS['score_vs_floor']:.1f}x the floor's files/s: "
          f"{'met' if r1 >= TARGETS['score_vs_floor'] else 'NOT met'} ({r1:.2f}x); list "
          f"on a pipe >= {TARGETS['stdin_vs_dir']:.1f}x the directory: "
          f"{'met' if r2 >= TARGETS['stdin_vs_dir'] else 'NOT met'} ({r2:.2f}x)")
    if many:
        a, b = many["half"], many["all"]
        grow = b["peak_mib"] / a["peak_mib"] - 1
        print(f"ae-score, inputs listed on a pipe: peak RSS {a['peak_mib']:.0f} MiB for "
              f"{a['n']:,}, {b['peak_mib']:.0f} MiB for {b['n']:,} ({grow:+.1%}; "
              f"{b['files_per_s']:.0f} files/s); target flat (<= {TARGETS['rss_growth']:.0%}): "
              f"{'met' if grow <= TARGETS['rss_growth'] else 'NOT met'}")
        result["many"] = {**many, "growth": grow}
    save("score", result)


if __name__ == "__main__":
    main()
