"""Stress test of issue 18 item 1 ("no hang, ever"): run ae-featurize and ae-score start to
finish many times with worker processes (-j 2), each under a timeout, plus runs stopped at
random moments by SIGINT or SIGTERM sent to the whole process group (what Ctrl-C and a batch
scheduler do) or SIGKILL sent to the parent alone (what the OOM killer does).

Slow (about 10-20 minutes on 2 busy cores with the defaults): not part of `make test`; run it
by hand or with `make stress`:

    .venv/bin/python bench/stress_batch.py              # 200 runs of each command + kills
    .venv/bin/python bench/stress_batch.py --runs 20 --kills 6   # a quick look

Every run is checked:
  * it ends within --timeout seconds (else: a hang; its process group is killed);
  * a complete run exits 0 with no output on stderr (-q), and its output is there;
  * a run stopped by SIGINT/SIGTERM exits 130/143 with exactly one line on stderr
    ("ae-xxx: interrupted" / "ae-xxx: terminated (SIGTERM)"), or 0 if it had finished;
    one stopped before Python could install its handlers may die of the signal itself
    (status -N, nothing on stderr, nothing written). Either way no temporary is left;
  * a SIGKILLed run may leave its temporary (nothing can run): the next run writing the same
    output must remove it;
  * no worker process outlives its run (none is left with the run's command line).
Prints the figures (runs, hangs, failures, ...) and exits 1 when any run hung or failed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def exe(name: str) -> str:
    return str(BIN / name)


def processes_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state != "Z":
            found.append(int(d.name))
    return found


def temporaries(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


class Stats:
    def __init__(self) -> None:
        self.runs = self.hangs = self.failures = self.orphans = self.left = 0
        self.outcomes: dict[str, int] = {}
        self.seconds: list[float] = []
        self.notes: list[str] = []

    def fail(self, what: str) -> None:
        self.failures += 1
        if len(self.notes) < 30:
            self.notes.append(what)
        print("FAIL:", what, flush=True)


def run_once(cmd: list[str], out: Path, stats: Stats, timeout: float,
             sig: int | None = None, at: float = 0.0) -> tuple[int | None, str]:
    """Run ``cmd`` in its own process group; with ``sig``, send it to the group after ``at``
    seconds. Returns (exit status or None on a hang, stderr)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    if sig is not None:
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            try:  # SIGKILL to the parent alone (the OOM killer): its workers must follow it
                os.kill(proc.pid, sig) if sig == signal.SIGKILL else os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    try:
        _, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        stats.hangs += 1
        stats.notes.append(f"HANG after {timeout:g} s: {' '.join(cmd)} "
                           f"(processes {processes_with(str(out))})")
        print(stats.notes[-1], flush=True)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, err = proc.communicate()
        code = None
    stats.runs += 1
    stats.seconds.append(time.monotonic() - t0)
    # No worker may outlive its run (they die with the parent, even a SIGKILLed one).
    deadline = time.monotonic() + 10
    while processes_with(str(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = processes_with(str(out))
    if alive:
        stats.orphans += 1
        stats.fail(f"processes outlived the run: {alive}: {' '.join(cmd)}")
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return code, err


def check(kind: str, prog: str, cmd: list[str], out: Path, stats: Stats, timeout: float,
          sig: int | None = None, at: float = 0.0, valid=None) -> None:
    code, err = run_once(cmd, out, stats, timeout, sig, at)
    if code is None:
        return
    err = err.decode("utf-8", "replace").strip()
    name = signal.Signals(sig).name if sig else "none"
    expected_line = {signal.SIGINT: f"{prog}: interrupted",
                     signal.SIGTERM: f"{prog}: terminated (SIGTERM)"}.get(sig)
    left = temporaries(out)
    if code == 0:
        outcome = "completed"
        if err:
            stats.fail(f"{kind} {name}: exit 0 with stderr {err[:300]!r}")
        elif not out.exists() or (valid is not None and not valid(out)):
            stats.fail(f"{kind} {name}: exit 0 but the output is missing or invalid")
    elif sig is not None and code == -sig and not err:
        outcome = "killed by the signal"
    elif sig is not None and code == 128 + sig and err == expected_line:
        outcome = f"stopped ({code})"
    else:
        outcome = "wrong"
        stats.fail(f"{kind} {name} at {at:.2f} s: exit status {code}, stderr {err[-400:]!r}")
    stats.outcomes[f"{kind} {name}: {outcome}"] = stats.outcomes.get(f"{kind} {name}: {outcome}", 0) + 1
    if sig == signal.SIGKILL and code == -signal.SIGKILL:
        if len(left) > 1:
            stats.fail(f"{kind} SIGKILL left {left}")
        if left:  # the next run writing the same output removes it
            stats.left += 1
            out.unlink(missing_ok=True)
            code2, err2 = run_once(cmd, out, stats, timeout)
            if code2 != 0 or temporaries(out):
                stats.fail(f"{kind}: the run after a SIGKILL exited {code2} and left "
                           f"{temporaries(out)}; {err2[-300:]!r}")
    elif left:
        stats.fail(f"{kind} {name}: temporaries left: {left}")
    out.unlink(missing_ok=True)


def valid_features(path: Path) -> bool:
    import h5py

    with h5py.File(path, "r") as f:
        return f["features"].shape[0] > 0


def valid_scores(path: Path) -> bool:
    lines = path.read_text().splitlines()
    return len(lines) > 1 and lines[0].startswith("id,")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=200, help="complete runs of each command")
    ap.add_argument("--kills", type=int, default=30,
                    help="runs of each command stopped at a random moment (SIGINT, SIGTERM, "
                         "SIGKILL in turn)")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds before a run is a hang")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="work directory [a new temporary one]")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.dir or tempfile.mkdtemp(prefix="aekit-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    env_q = ["-q"]

    t_start = time.monotonic()
    if not data.exists():
        subprocess.run([exe("ae-synth"), str(data), "--clips-per-machine", "3", "--machine-types",
                        "fan,pump", "--duration", "1", *env_q], check=True)
    feats, model = work / "train.h5", work / "model.safetensors"
    if not model.exists():
        subprocess.run([exe("ae-featurize"), str(data), "--preset", "dcase2020", "--num-samples",
                        "100000", "-o", str(feats), "-j", "1", *env_q], check=True)
        subprocess.run([exe("ae-train"), str(feats), "-o", str(model), "--hidden", "16,8",
                        "--latent", "4", "--epochs", "1", "--batch-size", "4", *env_q], check=True)
    n_files = sum(1 for p in data.rglob("*.wav"))
    print(f"work directory {work}: {n_files} audio files, -j {args.jobs}, "
          f"{args.runs} runs + {args.kills} stopped runs of each command, timeout "
          f"{args.timeout:g} s", flush=True)

    def featurize_cmd(out: Path) -> list[str]:
        return [exe("ae-featurize"), str(data), "--preset", "dcase2020", "--num-samples", "100000",
                "-o", str(out), "-j", str(args.jobs), "-q"]

    def score_cmd(out: Path) -> list[str]:
        return [exe("ae-score"), str(model), str(data), "-o", str(out), "-j", str(args.jobs), "-q"]

    commands = [("ae-featurize", featurize_cmd, ".h5", valid_features),
                ("ae-score", score_cmd, ".csv", valid_scores)]
    total = Stats()
    for prog, make, ext, valid in commands:
        stats = Stats()
        t0 = time.monotonic()
        for i in range(args.runs):
            out = work / f"run{i}{ext}"
            check(prog, prog, make(out), out, stats, args.timeout, valid=valid)
            if (i + 1) % 25 == 0:
                print(f"  {prog}: {i + 1} runs, {stats.hangs} hangs, {stats.failures} failures, "
                      f"{time.monotonic() - t0:.0f} s", flush=True)
        typical = sorted(stats.seconds)[len(stats.seconds) // 2] if stats.seconds else 3.0
        sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGKILL]
        for i in range(args.kills):
            out = work / f"kill{i}{ext}"
            sig = sigs[i % 3]
            at = rng.uniform(0.05, 0.9 * typical)  # mostly while it works
            check(prog, prog, make(out), out, stats, args.timeout, sig=sig, at=at, valid=valid)
        print(f"{prog}: runs {stats.runs}, hangs {stats.hangs}, failures {stats.failures}, "
              f"orphans {stats.orphans}, SIGKILL temporaries removed by the next run "
              f"{stats.left}; median run {typical:.2f} s, longest {max(stats.seconds):.2f} s",
              flush=True)
        for k, v in sorted(stats.outcomes.items()):
            print(f"    {k}: {v}")
        for attr in ("runs", "hangs", "failures", "orphans", "left"):
            setattr(total, attr, getattr(total, attr) + getattr(stats, attr))
        total.notes += stats.notes
    print(f"TOTAL: runs {total.runs}, hangs {total.hangs}, failures {total.failures}, orphans "
          f"{total.orphans}; {time.monotonic() - t_start:.0f} s", flush=True)
    for note in total.notes:
        print("  ", note)
    return 1 if total.hangs or total.failures else 0


if __name__ == "__main__":
    sys.exit(main())
