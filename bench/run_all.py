"""`make bench`: every benchmark, one after the other, each printing its ratios.

Absolute times on shared machines are noise; the ratios (against the tutorial's own code
path and against the hardware floor, measured side by side in one run) are the figures.
Results are also written to bench/out/*.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_featurize.py", "bench_train.py", "bench_stream.py", "bench_infer.py",
           "bench_score.py"]


def main() -> int:
    failed = []
    for name in BENCHES:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / name)])
        print(f"({name}: {time.perf_counter() - t:.0f} s, exit {rc})", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
