"""ae-score against ae-featurize on the same files: a directory, and a list streamed on stdin.

DCASE-like data made here: 10-second mono 16 kHz WAV clips, the dcase2020 feature preset
(64 Mel bands, 313 frames) and a frame-window model (--arch frames, about 0.3 M
parameters; built, not trained: a trained one costs the same). In one run, each command as
a user runs it (a process, all cores):
  * ae-featurize DIR -o f.h5                     decode + features + HDF5 (checksums)
  * ae-score MODEL DIR -o s.csv                  decode + features + model, CSV rows
  * cat list | ae-score MODEL - -o s.csv         the same files listed on a pipe (streamed)
files/s are marginal, start-up cancelled (the whole set's time minus that of its first
quarter, both measured), as in bench_featurize. Printed: files/s, ae-score's ratio to
ae-featurize's files/s (target >= 1.0: ae-score does the same decoding and features and
writes no HDF5) and the stdin list's ratio to the directory (target >= 0.9). --many N
(default 10000, 0 skips) adds a row: N inputs listed on a pipe (the clips listed again),
the ae-score process's largest RSS over the first tenth of the rows and over the whole run
(target: flat, within 5 %; a batch's forward pass comes and goes, hence peaks).
Usage: python bench/bench_score.py [--clips 400] [--many 10000] [--device auto] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
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
TARGETS = {"score_vs_featurize": 1.0, "stdin_vs_dir": 0.9, "rss_growth": 0.05}
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

    from aekit.features import MelParams
    from aekit.modelfile import make_normalizer, save_model
    from aekit.models import build_model, count_parameters, make_config

    params = MelParams.from_preset(PRESET)
    torch.manual_seed(0)
    model = build_model(make_config("frames", tuple(params.clip_shape))).eval()
    save_model(path, model, make_normalizer(model, "global"), params.to_attrs())
    return count_parameters(model)


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


def rss_over_run(cmd: list[str], listing: list[str]) -> dict:
    """RSS (MiB) of ae-score reading ``listing`` on a pipe: the most over its first tenth
    of rows, and the most over the run (sampled every 50 ms from /proc)."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    text = "".join(f"{s}\n" for s in listing)
    threading.Thread(target=lambda: (p.stdin.write(text), p.stdin.close()), daemon=True).start()
    rows = [0]
    threading.Thread(target=lambda: [rows.__setitem__(0, rows[0] + 1) for _ in p.stdout],
                     daemon=True).start()
    status = Path(f"/proc/{p.pid}/status")
    first, peak = None, 0.0
    t = time.perf_counter()
    while p.poll() is None:
        try:
            kb = next(int(x.split()[1]) for x in status.read_text().splitlines()
                      if x.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            break
        mib = kb / 1024
        if 0 < rows[0] < max(2, len(listing) // 10):
            first = max(first or 0.0, mib)  # the first tenth's peak (batches come and go)
        peak = max(peak, mib)
        time.sleep(0.05)
    secs = time.perf_counter() - t
    if p.wait() != 0:
        raise SystemExit(f"{' '.join(cmd)} failed")
    return {"n": len(listing), "first_tenth_mib": first, "peak_mib": peak,
            "files_per_s": len(listing) / secs}


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
                        str(out / f"s_{which}.csv"), "--device", args.device, "-q", *jobs])

        def score_stdin(which):
            return run([str(BIN / "ae-score"), str(model), "-", "-o", str(out / "s_list.csv"),
                        "--device", args.device, "-q", *jobs],
                       stdin_text="".join(f"{p}\n" for p in sets[which][1]))

        score_dir("quarter")  # warm the page cache and the imports
        res = {"featurize": marginal(featurize, len(clips), nq),
               "score_dir": marginal(score_dir, len(clips), nq),
               "score_stdin": marginal(score_stdin, len(clips), nq)}
        many = None
        if args.many:
            listing = [str(clips[i % len(clips)]) for i in range(args.many)]
            many = rss_over_run([str(BIN / "ae-score"), str(model), "-", "--device",
                                 args.device, "-q", *jobs], listing)
    f = res["featurize"]["files_per_s"]
    rows = [("ae-featurize (dir -> HDF5)", f"{f:.1f}", "1.00x", "-"),
            ("ae-score (dir)", f"{res['score_dir']['files_per_s']:.1f}",
             f"{res['score_dir']['files_per_s'] / f:.2f}x", "-"),
            ("ae-score (list on a pipe)", f"{res['score_stdin']['files_per_s']:.1f}",
             f"{res['score_stdin']['files_per_s'] / f:.2f}x",
             f"{res['score_stdin']['files_per_s'] / res['score_dir']['files_per_s']:.2f}x")]
    print(f"ae-score vs ae-featurize: {len(clips)} clips of 10 s mono, preset {PRESET}, "
          f"frames model {n_params / 1e6:.2f} M parameters, device {args.device}, "
          f"{args.jobs or cores()} job(s) ({cores()} cores); marginal files/s")
    print(table(rows, ("what", "files/s", "vs featurize", "list vs dir")))
    r1 = res["score_dir"]["files_per_s"] / f
    r2 = res["score_stdin"]["files_per_s"] / res["score_dir"]["files_per_s"]
    result = {"clips": len(clips), "preset": PRESET, "parameters": n_params,
              "device": args.device, "cores": cores(), **res,
              "score_vs_featurize": r1, "stdin_vs_dir": r2}
    print(f"target: ae-score >= {TARGETS['score_vs_featurize']:.1f}x ae-featurize's files/s: "
          f"{'met' if r1 >= TARGETS['score_vs_featurize'] else 'NOT met'} ({r1:.2f}x); list "
          f"on a pipe >= {TARGETS['stdin_vs_dir']:.1f}x the directory: "
          f"{'met' if r2 >= TARGETS['stdin_vs_dir'] else 'NOT met'} ({r2:.2f}x)")
    if many:
        grow = many["peak_mib"] / many["first_tenth_mib"] - 1
        print(f"ae-score, {many['n']:,} inputs listed on a pipe: largest RSS "
              f"{many['first_tenth_mib']:.0f} MiB over the first tenth, {many['peak_mib']:.0f} MiB over the run ({grow:+.1%}), "
              f"{many['files_per_s']:.0f} files/s; target flat (<= "
              f"{TARGETS['rss_growth']:.0%}): {'met' if grow <= TARGETS['rss_growth'] else 'NOT met'}")
        result["many"] = {**many, "growth": grow}
    save("score", result)


if __name__ == "__main__":
    main()
