"""`make bench`: every benchmark, one after the other, each printing its ratios.

Absolute times on shared machines are noise; the ratios (against the tutorial's own code
path and against the hardware floor, measured side by side in one run) are the figures.
Results are also written to bench/out/*.json.

    python bench/run_all.py [--device auto|cpu|cuda]

--device (default auto: CUDA when present) is handed to every benchmark that runs a model,
so that on a GPU machine one command measures the GPU; each prints the device its rows ran
on. ae-featurize has no device (it runs on the CPU): its benchmark is run as it is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_featurize.py", "bench_train.py", "bench_frames.py", "bench_stream.py",
           "bench_infer.py", "bench_score.py"]
#: The benchmarks whose rows run a model: they take --device.
ON_DEVICE = {"bench_train.py", "bench_frames.py", "bench_stream.py", "bench_infer.py",
             "bench_score.py"}


def command(name: str, device: str) -> list[str]:
    """The command line of one benchmark."""
    return [sys.executable, str(HERE / name)] + (["--device", device] if name in ON_DEVICE
                                                 else [])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when present), cpu, cuda, cuda:N: where the rows run")
    args = ap.parse_args(argv)
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(command(name, args.device))
        print(f"({name}: {time.perf_counter() - t:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
