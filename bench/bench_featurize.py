"""ae-featurize against the tutorial's per-file loop and against the hardware floor.

Two data sets, made here: 6-second stereo WAV clips (the tutorial's case) and
60-second stereo FLAC recordings (where reading whole files is what the loop pays for).
On each, in one run:
  * ae-featurize   the library call the command makes (worker processes, HDF5 output)
  * tutorial loop  soundfile load + truncate/pad + MelSpectrogram/AmplitudeToDB built per
                   file, in its own process, results kept in memory (no file written)
  * floor          decode of only the kept samples plus the fastest STFT+Mel of those
                   arrays in memory, on one core, divided by the number of cores
Prints files/s and the ratios; targets: >= 1.5x the loop on clips, >= 10x on long FLAC,
>= 0.7x the floor.
Usage: python bench/bench_featurize.py [--clips 400] [--long 48] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_of, cores, peak_rss_mib, save, table  # noqa: E402

SR = 16000
N = 100_000


def make_files(d: Path, n: int, seconds: float, fmt: str, seed: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_samp = int(seconds * SR)
    t = np.arange(n_samp) / SR
    base = np.stack([np.sin(2 * np.pi * 120 * t), np.sin(2 * np.pi * 180 * t)], 1) * 0.2
    paths = []
    for i in range(n):
        p = d / f"clip_{i:05d}.{fmt}"
        if not p.exists():
            x = base * rng.uniform(0.5, 1.5) + 0.05 * rng.standard_normal((n_samp, 2))
            sf.write(str(p), x.astype(np.float32), SR, subtype="PCM_16")
        paths.append(p)
    return paths


TUTORIAL_LOOP = textwrap.dedent("""
    import sys, time, json
    import soundfile as sf, torch, torchaudio.transforms as T
    paths = sys.argv[1:]
    t0 = time.perf_counter()
    out = []
    for path in paths:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        wav = torch.from_numpy(data.T.copy())                 # [C, n]
        if wav.shape[1] > 100000:
            wav = wav[:, :100000]
        else:
            wav = torch.nn.functional.pad(wav, (0, 100000 - wav.shape[1]))
        mel = T.MelSpectrogram(sample_rate=sr, n_fft=1024, hop_length=256, n_mels=32)
        to_db = T.AmplitudeToDB(top_db=80)
        out.append(to_db(mel(wav)))
    print(json.dumps({"seconds": time.perf_counter() - t0, "n": len(out)}))
""")


def time_tutorial_loop(paths: list[Path]) -> float:
    p = subprocess.run([sys.executable, "-c", TUTORIAL_LOOP, *map(str, paths)],
                       capture_output=True, text=True, check=True)
    import json

    return json.loads(p.stdout.strip().splitlines()[-1])["seconds"]


def _decode_kept(path: str) -> np.ndarray:
    with sf.SoundFile(path) as f:
        x = f.read(frames=N, dtype="float32", always_2d=True)
    if x.shape[0] < N:
        x = np.pad(x, ((0, N - x.shape[0]), (0, 0)))
    return np.ascontiguousarray(x.T)


def time_floor(paths: list[Path]) -> tuple[float, float, float]:
    """(decode seconds, compute seconds, floor seconds), all of one core.

    The floor is the work itself with perfect scaling and no overhead: decoding only the
    kept samples plus the fastest STFT + Mel of in-memory arrays (best batch size), both on
    one core, divided by the number of cores. Nothing that processes these files can beat it.
    """
    import torch

    from aekit.features import MelFrontend, MelParams

    _decode_kept(str(paths[0]))
    t = time.perf_counter()
    arrays = [_decode_kept(str(p)) for p in paths]
    t_decode = time.perf_counter() - t
    wave = torch.from_numpy(np.stack(arrays))  # [B, C, N]
    fe = MelFrontend(MelParams())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = math.inf
    for bs in (1, 4, 16):
        def run():
            with torch.inference_mode():
                for s in range(0, len(wave), bs):
                    fe(wave[s:s + bs])
        best = min(best, best_of(run, 2))
    torch.set_num_threads(threads)
    return t_decode, best, (t_decode + best) / cores()


def time_aekit(paths: list[Path], out: Path) -> float:
    from aekit.audio import make_ids
    from aekit.features import MelParams
    from aekit.featurize import featurize

    ids = make_ids(paths)

    def run():
        featurize(paths, ids, out, MelParams(), jobs=cores())

    return best_of(run, 2)


def bench_set(name: str, paths: list[Path], work: Path) -> dict:
    n = len(paths)
    # Touch every file once so the page cache is equally warm for all three.
    for p in paths:
        p.read_bytes()
    t_loop = time_tutorial_loop(paths)
    t_ae = time_aekit(paths, work / f"{name}.h5")
    rss = peak_rss_mib()  # the parent's peak so far: featurize's, before the floor's arrays
    t_dec, t_comp, t_floor = time_floor(paths)
    return {
        "set": name, "files": n,
        "aekit_files_per_s": n / t_ae, "loop_files_per_s": n / t_loop,
        "floor_files_per_s": n / t_floor,
        "decode_s": t_dec, "compute_s": t_comp, "aekit_parent_peak_rss_mib": rss,
        "speedup_vs_loop": t_loop / t_ae, "fraction_of_floor": t_floor / t_ae,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=800, help="6-second WAV clips")
    ap.add_argument("--long", type=int, default=96, help="60-second FLAC recordings")
    ap.add_argument("--keep", type=Path, default=None, help="cache the generated audio here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        work = Path(tmp)
        clips = make_files(base / "clips6s", args.clips, 6.0, "wav", 1)
        long = make_files(base / "flac60s", args.long, 60.0, "flac", 2)
        results = [bench_set("6 s WAV clips", clips, work), bench_set("60 s FLAC", long, work)]
    rows = [(r["set"], r["files"], f"{r['aekit_files_per_s']:.0f}", f"{r['loop_files_per_s']:.0f}",
             f"{r['floor_files_per_s']:.0f}", f"{r['speedup_vs_loop']:.2f}x",
             f"{r['fraction_of_floor']:.2f}x") for r in results]
    print(f"ae-featurize, {cores()} cores (files/s; ratios from this one run)")
    print(table(rows, ("data", "files", "ae-featurize", "tutorial loop", "floor",
                       "vs loop", "of floor")))
    print("targets: >= 1.5x loop on 6 s clips, >= 10x on 60 s FLAC, >= 0.7x floor")
    print(f"ae-featurize parent peak RSS: {results[0]['aekit_parent_peak_rss_mib']:.0f} MiB "
          f"after {results[0]['files']} clips (torch and the decoders included; results are written in blocks)")
    save("featurize", {"cores": cores(), "results": results})


if __name__ == "__main__":
    main()
