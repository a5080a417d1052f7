"""ae-featurize against the tutorial's per-file loop and against the hardware floor.

Two data sets, made here: 6-second stereo WAV clips (the tutorial's case) and
60-second stereo FLAC recordings (where reading whole files is what the loop pays for).
On each, in one run:
  * ae-featurize   the library call the command makes (worker processes, HDF5 output)
  * tutorial loop  soundfile load + truncate/pad + MelSpectrogram/AmplitudeToDB built per
                   file, in its own process, results kept in memory (no file written)
  * floor          decode of only the kept samples plus the fastest STFT+Mel of those
                   arrays in memory, one process per core, all cores at once (time_floor)
ae-featurize's files/s are marginal, start-up cancelled (the whole set's time minus that of
its first quarter, both measured), as the loop and the floor are timed after their imports;
the whole run's rate and the start-up are printed beside them. Each row prints files/s, the ratio to the loop and to the floor (wall clock), the CPU
efficiency (the floor's CPU seconds per file over ae-featurize's, parent and workers
together: the honest figure when other work shares the machine), the targets and the
parent's largest RSS during the run (torch alone is about 0.5 GiB of it). --many N (default
10000, 0 skips) adds a row of N inputs (the generated clips, listed again under new ids) and
reports how the parent's memory grows over the run.
Usage: python bench/bench_featurize.py [--clips 800] [--long 96] [--many 10000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
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
from common import cores, cpu_seconds, current_rss_mib, peak_rss_mib, save, table  # noqa: E402

SR = 16000
N = 100_000
# (ratio to the tutorial's loop, fraction of the floor); issue 13
TARGETS = {"clips": (1.8, 0.9), "flac": (9.0, 0.9)}


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
    t0, c0 = time.perf_counter(), time.process_time()
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
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "n": len(out)}))
""")


def time_tutorial_loop(paths: list[Path]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the loop over ``paths``, start-up excluded."""
    p = subprocess.run([sys.executable, "-c", TUTORIAL_LOOP, *map(str, paths)],
                       capture_output=True, text=True, check=True)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return r["seconds"], r["cpu"]


def _decode_kept(path: str) -> np.ndarray:
    with sf.SoundFile(path) as f:
        x = f.read(frames=N, dtype="float32", always_2d=True)
    if x.shape[0] < N:
        x = np.pad(x, ((0, N - x.shape[0]), (0, 0)))
    return np.ascontiguousarray(x.T)


def _floor_one(paths: list[Path], repeat: int) -> tuple[float, float]:
    """(decode, compute) CPU seconds of one core on ``paths``: the least disturbed of
    ``repeat`` decodes of the kept samples, and of ``repeat`` runs of the fastest STFT + Mel
    on the decoded arrays in memory (batch sizes 1, 4, 16)."""
    import torch

    from aekit.audio.features import MelFrontend, MelParams

    torch.set_num_threads(1)
    _decode_kept(str(paths[0]))
    t_decode = math.inf
    for _ in range(repeat):
        c = time.process_time()
        arrays = [_decode_kept(str(p)) for p in paths]
        t_decode = min(t_decode, time.process_time() - c)
    wave = torch.from_numpy(np.stack(arrays))  # [B, C, N]
    del arrays
    fe = MelFrontend(MelParams())
    fe.warm_up()
    t_comp = math.inf
    for bs in (1, 4, 16):
        for _ in range(repeat):
            c = time.process_time()
            with torch.inference_mode():
                for s in range(0, len(wave), bs):
                    fe(wave[s:s + bs])
            t_comp = min(t_comp, time.process_time() - c)
    return t_decode, t_comp


def _floor_worker(paths, repeat, barrier, out) -> None:
    import torch  # noqa: F401  (imported before the start line, as the others)

    barrier.wait()
    out.put(_floor_one(paths, repeat))


def time_floor(paths: list[Path], repeat: int = 3) -> dict:
    """The floor: the work itself with no overhead, in CPU seconds.

    Decoding only the kept samples plus the fastest STFT + Mel of in-memory arrays, run on
    every core at once (one process per core, each on its share of the files, started
    together), so the floor pays what sharing the machine's caches, memory and clock costs,
    as any parallel run of this work must. Its wall time is the CPU seconds per core. The
    same work on one core with the others idle is reported beside it ("alone"): on the 2-core
    machine here, the same STFTs cost 15-70 % more CPU time with both cores busy, so that
    figure divided by the number of cores is a floor no parallel run can reach. CPU time,
    not wall time, so that other work on the machine inflates it less.
    """
    import multiprocessing as mp

    alone_decode, alone_comp = _floor_one(paths, repeat)
    n = cores()
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    shares = [list(part) for part in np.array_split(np.array(paths, dtype=object), n)]
    procs = [ctx.Process(target=_floor_worker, args=(share, repeat, barrier, out))
             for share in shares]
    for p in procs:
        p.start()
    parts = [out.get() for _ in procs]
    for p in procs:
        p.join()
    decode = sum(d for d, _ in parts)
    comp = sum(c for _, c in parts)
    return {"decode_s": decode, "compute_s": comp, "cpu_s": decode + comp,
            "wall_s": max(d + c for d, c in parts),
            "alone_cpu_s": alone_decode + alone_comp}


def time_aekit(paths: list[Path], out: Path, repeat: int = 2, ids=None, rss_trace=None) -> dict:
    """ae-featurize's library call: best wall time and least CPU (parent + its workers)."""
    from aekit.audio.decode import make_ids
    from aekit.audio.features import MelParams
    from aekit.data.ingest import featurize

    ids = ids or make_ids(paths)
    progress = None if rss_trace is None else (lambda _k: rss_trace.append(current_rss_mib()))
    wall = cpu = math.inf
    for _ in range(repeat):
        c = cpu_seconds()
        t = time.perf_counter()
        featurize(paths, ids, out, MelParams(), jobs=cores(), progress=progress)
        wall = min(wall, time.perf_counter() - t)
        cpu = min(cpu, cpu_seconds() - c)
    return {"wall_s": wall, "cpu_s": cpu}


def bench_set(name: str, kind: str, paths: list[Path], work: Path) -> dict:
    n = len(paths)
    # Touch every file once so the page cache is equally warm for all three.
    for p in paths:
        p.read_bytes()
    t_loop, c_loop = time_tutorial_loop(paths)
    trace: list[float] = []  # the parent's RSS after each task, over both runs
    whole = time_aekit(paths, work / f"{kind}.h5", rss_trace=trace)
    # Marginal rate, start-up cancelled (as the tutorial's loop is timed after its imports):
    # the whole set minus its first quarter, both run here.
    q = max(1, n // 4)
    part = time_aekit(paths[:q], work / f"{kind}_q.h5")
    ae = {"wall_s": (whole["wall_s"] - part["wall_s"]) * n / (n - q),
          "cpu_s": (whole["cpu_s"] - part["cpu_s"]) * n / (n - q)}
    startup = whole["wall_s"] - ae["wall_s"]
    rss = max(trace, default=peak_rss_mib())
    fl = time_floor(paths)
    to_loop, to_floor = TARGETS[kind]
    return {
        "set": name, "kind": kind, "files": n,
        "aekit_files_per_s": n / ae["wall_s"], "loop_files_per_s": n / t_loop,
        "aekit_whole_run_files_per_s": n / whole["wall_s"], "aekit_startup_s": startup,
        "floor_files_per_s": n / fl["wall_s"],
        "decode_s": fl["decode_s"], "compute_s": fl["compute_s"],
        "floor_cpu_ms_per_file": 1e3 * fl["cpu_s"] / n,
        "floor_alone_cpu_ms_per_file": 1e3 * fl["alone_cpu_s"] / n,
        "fraction_of_alone_floor": fl["alone_cpu_s"] / cores() / ae["wall_s"],
        "aekit_cpu_ms_per_file": 1e3 * ae["cpu_s"] / n,
        "loop_cpu_ms_per_file": 1e3 * c_loop / n,
        "aekit_parent_peak_rss_mib": rss,
        "speedup_vs_loop": t_loop / ae["wall_s"], "fraction_of_floor": fl["wall_s"] / ae["wall_s"],
        "cpu_efficiency": fl["cpu_s"] / ae["cpu_s"],
        "target_vs_loop": to_loop, "target_of_floor": to_floor,
        "load_average": _load(),
    }


def bench_many(clips: list[Path], many: int, work: Path) -> dict:
    """``many`` inputs (the clips listed again, each under its own id): the parent's RSS
    over the run, sampled after every task, and its growth past the first tenth."""
    paths = [clips[i % len(clips)] for i in range(many)]
    ids = [f"x{i:06d}" for i in range(many)]
    trace: list[float] = []
    ae = time_aekit(paths, work / "many.h5", repeat=1, ids=ids, rss_trace=trace)
    settled = trace[len(trace) // 10] if trace else math.nan
    return {"files": many, "aekit_files_per_s": many / ae["wall_s"],
            "aekit_cpu_ms_per_file": 1e3 * ae["cpu_s"] / many,
            "rss_after_first_tenth_mib": settled, "rss_max_mib": max(trace, default=math.nan),
            "rss_growth_mib": max(trace, default=math.nan) - settled}


def _load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=800, help="6-second WAV clips")
    ap.add_argument("--long", type=int, default=96, help="60-second FLAC recordings")
    ap.add_argument("--many", type=int, default=10_000,
                    help="also featurize this many short-clip inputs and report the parent's "
                         "RSS (issue 13: flat over 10,000); 0: skip")
    ap.add_argument("--keep", type=Path, default=None, help="cache the generated audio here")
    args = ap.parse_args()
    many = None
    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        work = Path(tmp)
        clips = make_files(base / "clips6s", args.clips, 6.0, "wav", 1)
        long = make_files(base / "flac60s", args.long, 60.0, "flac", 2)
        results = [bench_set("6 s WAV clips", "clips", clips, work),
                   bench_set("60 s FLAC", "flac", long, work)]
        if args.many:
            many = bench_many(clips, args.many, work)
    rows = [(r["set"], r["files"], f"{r['aekit_files_per_s']:.0f}", f"{r['loop_files_per_s']:.0f}",
             f"{r['floor_files_per_s']:.0f}", f"{r['speedup_vs_loop']:.2f}x",
             f"{r['fraction_of_floor']:.2f}x", f"{r['cpu_efficiency']:.2f}x",
             f">= {r['target_vs_loop']:g}x loop, >= {r['target_of_floor']:g}x floor",
             f"{r['aekit_parent_peak_rss_mib']:.0f}") for r in results]
    print(f"ae-featurize, {cores()} cores (files/s; ratios from this one run; "
          f"load average {_load():.1f})")
    print(table(rows, ("data", "files", "ae-featurize", "tutorial loop", "floor", "vs loop",
                       "of floor", "CPU eff.", "target", "parent RSS MiB (max)")))
    print("ae-featurize: marginal files/s, start-up cancelled (the whole set minus its first "
          "quarter), as the loop and the floor are timed after their imports")
    print("of floor: wall-clock ratio; CPU eff.: the floor's CPU per file / ae-featurize's "
          "(parent + workers), which other load on the machine disturbs less")
    for r in results:
        print(f"  {r['set']}: CPU ms per file: floor {r['floor_cpu_ms_per_file']:.2f} (decode "
              f"{1e3 * r['decode_s'] / r['files']:.2f}; the same work on one core with the others "
              f"idle: {r['floor_alone_cpu_ms_per_file']:.2f}, of which ae-featurize reaches "
              f"{r['fraction_of_alone_floor']:.2f}x), ae-featurize {r['aekit_cpu_ms_per_file']:.2f}, "
              f"loop {r['loop_cpu_ms_per_file']:.2f}; whole run with start-up "
              f"{r['aekit_whole_run_files_per_s']:.0f} files/s (start-up {r['aekit_startup_s']:.2f} s)")
    if many:
        print(f"{many['files']} short-clip inputs: {many['aekit_files_per_s']:.0f} files/s; parent RSS "
              f"{many['rss_after_first_tenth_mib']:.0f} MiB after the first tenth, at most "
              f"{many['rss_max_mib']:.0f} MiB (growth {many['rss_growth_mib']:+.1f} MiB; target: flat)")
    save("featurize", {"cores": cores(), "results": results, "many": many})


if __name__ == "__main__":
    main()
