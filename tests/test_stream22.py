"""Issue 22 item 2: ae-score reads a list of paths on stdin as it comes.

The first rows come out while the list is still being written; the list is never held
(memory flat over 20,000 inputs); order, the failure policy, -o and the watchdog are those
of a list of paths given as arguments; a clip's score does not depend on when the list
paused (every forward pass is a full --batch-size).
"""

from __future__ import annotations

import csv
import io
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import exe, invoke, write_tone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork, pipes")

FIRST_ROWS_S = 45  # bounded wait for the first rows (a loaded machine starts slowly)


def rows_of(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """8 short tones and a small untrained model (built, not trained: fast) that records the
    feature parameters ae-score featurizes them with."""
    import torch

    from aekit.audio.features import MelParams
    from aekit.models.modelfile import Normalizer, save_model
    from aekit.models.mlp import AEConfig
    from aekit.models.registry import build_model

    root = tmp_path_factory.mktemp("stream22")
    audio = root / "a"
    for i in range(8):
        write_tone(audio / f"m{i}.wav", sr=16000, seconds=0.2, channels=1 + i % 2,
                   freq=300 + 40 * i, seed=i)
    params = MelParams(num_samples=2304, n_mels=4)
    shape = tuple(params.clip_shape)
    x = np.random.default_rng(0).normal(-40, 6, (16, *shape)).astype(np.float32)
    torch.manual_seed(0)
    net = build_model(AEConfig(input_shape=shape, hidden=(16, 8), latent=4)).eval()
    model = root / "m.safetensors"
    save_model(model, net, Normalizer("global", dim=x[0].size).fit([x]), params.to_attrs())
    return {"root": root, "audio": audio, "model": model, "wavs": sorted(audio.glob("*.wav"))}


def _children() -> set[int]:
    me, found = str(os.getpid()), set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z":
                found.add(int(d.name))
    return found


# ------------------------------------------------------------------ rows before the end

def test_cli_rows_come_while_the_list_is_still_being_written(setup, env_bin):
    """A writer lists 3 files, waits (bounded) until their rows are on ae-score's stdout, and
    only then lists the rest and closes the list. Before: no row until the list was closed."""
    wavs, missing = setup["wavs"], str(setup["audio"] / "gone.wav")
    p = subprocess.Popen([exe("ae-score"), str(setup["model"]), "-", "-j", "2", "-q",
                          "--batch-size", "64", "--max-fail-frac", "0.5"], env=env_bin,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(x) for x in p.stdout], daemon=True)
    reader.start()
    try:
        p.stdin.write("".join(f"{w}\n" for w in wavs[:3]))
        p.stdin.flush()
        got, deadline = [], time.monotonic() + FIRST_ROWS_S
        while len(got) < 4 and time.monotonic() < deadline:
            try:
                got.append(lines.get(timeout=0.2))
            except queue.Empty:
                pass
        early = list(got)
        p.stdin.write("".join(f"{w}\n" for w in [*wavs[3:], missing, wavs[0]]))
        p.stdin.close()
        assert p.wait(timeout=120) == 0, p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(timeout=10)
    while not lines.empty():
        got.append(lines.get())
    assert len(early) == 4, f"rows written before the list was closed: {early}"
    rows = rows_of("".join(got))
    listed = [*map(str, wavs), missing, str(wavs[0])]  # a repeated path: a row each time
    assert [r["path"] for r in rows] == listed
    assert [r["id"] for r in rows] == [s[:-len(".wav")] for s in listed]  # as listed
    assert [r["score"] == "" for r in rows] == [s == missing for s in listed]
    assert rows[0]["score"] == rows[-1]["score"] != ""  # the same file, the same score


WRITER = r"""
import sys
before, after, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.stdout.write(open(before).read())
sys.stdout.flush()
import select
released = bool(select.select([sys.stdin], [], [], wait)[0])  # a line from the test, or time
sys.stdout.write(open(after).read())
sys.stdout.flush()
sys.stderr.write("released" if released else "timed out")
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_library_stream_yields_before_the_end_and_scores_as_a_list_would(setup, jobs, tmp_path):
    """score_files on a pipe (written by another process): the records of the paths written
    so far come before the rest is written (-j 1 and -j 2), and every score equals, bit for
    bit, that of the same files given as a list (the pause changes when rows are written,
    never a batch's clips)."""
    import aekit
    from aekit.audio.pathstream import LineReader

    model = aekit.load_model(setup["model"])
    wavs = [str(w) for w in setup["wavs"]]
    listed = wavs[:3] + [str(setup["audio"] / "gone.wav")] + wavs[3:] + wavs[:2]
    want = list(aekit.score_files(model, listed, jobs=jobs, batch_size=4))
    (tmp_path / "before").write_text("".join(f"{p}\n" for p in listed[:2]))
    (tmp_path / "after").write_text("".join(f"{p}\n" for p in listed[2:]))
    before = _children()
    w = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "before"),
                          str(tmp_path / "after"), str(FIRST_ROWS_S)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    got = []
    try:
        for rec in aekit.score_files(model, LineReader(w.stdout.fileno()), jobs=jobs,
                                     batch_size=4):
            got.append(rec)
            if len(got) == 2:
                w.stdin.write("go\n")
                w.stdin.flush()
        assert w.wait(timeout=60) == 0
    finally:
        if w.poll() is None:
            w.kill()
    assert w.stderr.read() == "released", "the first records waited for the end of the list"
    w.stdout.close()
    w.stdin.close()
    w.stderr.close()
    assert [(r.index, r.path, r.id, r.error) for r in got] == \
        [(r.index, r.path, r.path, r.error) for r in want]
    assert [r.score for r in got] == [r.score for r in want]  # exactly
    assert _children() <= before


# ------------------------------------------------------------------ memory

def test_memory_does_not_grow_with_the_length_of_the_list(setup):
    """2,000 and 12,000 listed paths (missing files with long names: cheap failed rows) from
    an iterator: the parent's peak traced Python memory over the whole call differs by less
    than 1 MiB. Before, the whole list, its tasks and every failed record were held (about
    6 MiB more for the longer list)."""
    import tracemalloc

    import aekit

    model = aekit.load_model(setup["model"])
    base = str(setup["root"] / ("x" * 150))

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            count = 0
            for rec in aekit.score_files(model, (f"{base}/{i:06d}.wav" for i in range(n)),
                                         jobs=2, batch_size=64):
                assert rec.index == count and rec.score is None
                count += 1
            assert count == n
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak(2_000), peak(12_000)
    assert large - small < 1 << 20, f"grew {(large - small) / 2**20:.1f} MiB"


# ------------------------------------------------------------------ policy, order, ids

def test_stream_policy_order_and_ids(setup, tmp_path):
    from aekit.cmds import score

    wavs, gone = setup["wavs"], setup["audio"] / "gone.wav"
    model = setup["model"]
    listing = "".join(f"{p}\n" for p in [wavs[2], gone, wavs[1], wavs[0]])
    # over --max-fail-frac (1 of 4 > 5%): every row on stdout, then exit 1
    r = invoke(score.cli, [model, "-", "-j", "1", "-q"], input=listing)
    assert r.exit_code == 1 and "1 of 4 inputs failed" in r.stderr
    rows = rows_of(r.stdout)
    assert [row["path"] for row in rows] == [str(p) for p in [wavs[2], gone, wavs[1], wavs[0]]]
    # with -o: no file
    out = tmp_path / "s.csv"
    r = invoke(score.cli, [model, "-", "-j", "1", "-q", "-o", out], input=listing)
    assert r.exit_code == 1 and not out.exists() and list(tmp_path.iterdir()) == []
    # --on-error fail: stops at the failed row (the one before it already written)
    r = invoke(score.cli, [model, "-", "-j", "1", "-q", "--on-error", "fail"], input=listing)
    assert r.exit_code == 1 and f"{gone}: cannot read" in r.stderr
    assert [row["path"] for row in rows_of(r.stdout)] == [str(wavs[2])]
    # within the fraction: exit 0, -o written atomically at the end, ids relative to --root
    r = invoke(score.cli, [model, "-", "-j", "1", "-q", "-o", out, "--max-fail-frac", "0.5",
                           "--root", setup["root"]], input=listing)
    assert r.exit_code == 0, r.stderr
    assert [row["id"] for row in rows_of(out.read_text())] == ["a/m2", "a/gone", "a/m1", "a/m0"]
    # a listed path outside --root: exit 2, no file
    out2 = tmp_path / "s2.csv"
    r = invoke(score.cli, [model, "-", "-j", "1", "-q", "-o", out2, "--root", setup["audio"]],
               input=f"{wavs[0]}\n{setup['root'] / 'f.h5'}\n")
    assert r.exit_code == 2 and "is not under the id root" in r.stderr and not out2.exists()
    # without --root: ids are the paths as listed; a path listed twice gets a row each time
    r = invoke(score.cli, [model, "-", "-j", "2", "-q", "--batch-size", "2"],
               input=f"{wavs[3]}\n{wavs[1]}\n{wavs[3]}\n")
    assert r.exit_code == 0, r.stderr
    rows = rows_of(r.stdout)
    assert [row["id"] for row in rows] == [str(p.with_suffix("")) for p in (wavs[3], wavs[1],
                                                                           wavs[3])]
    assert rows[0]["score"] == rows[2]["score"] != ""
    # an empty list: exit 2, nothing on stdout
    r = invoke(score.cli, [model, "-", "-q"], input="\n\n")
    assert r.exit_code == 2 and "no paths on stdin" in r.stderr and r.stdout == ""


def test_listed_ids():
    from aekit.errors import InputError
    from aekit.audio.pathstream import listed_id

    assert listed_id("./new/a.wav") == "new/a"
    assert listed_id("/data/x/b.flac") == "/data/x/b"
    assert listed_id("new//c") == "new/c"
    assert listed_id("/data/x/b.flac", "/data") == "x/b"
    with pytest.raises(InputError, match="not under the id root"):
        listed_id("/elsewhere/b.wav", "/data")


def test_line_reader_parses_a_list_as_discover_does(tmp_path):
    """BOM dropped, CRLF and LF ends removed, empty lines skipped, spaces kept, bytes that
    are not UTF-8 kept as surrogates; nothing read past the read-ahead limit."""
    from aekit.audio.pathstream import LineReader

    r, w = os.pipe()
    os.write(w, b"\xef\xbb\xbfa.wav\r\n\n b .wav \nbad\xff.wav\nlast")
    os.close(w)
    src = LineReader(r, read_ahead=2)
    assert list(src) == ["a.wav", " b .wav ", "bad\udcff.wav", "last"]
    os.close(r)


# ------------------------------------------------------------------ watchdog

def test_the_watchdog_names_the_stuck_input_of_a_stream(setup, monkeypatch):
    import aekit
    from aekit.audio import decode as audio
    from aekit.errors import DataError
    from aekit.audio.pathstream import LineReader

    wavs = [str(w) for w in setup["wavs"]]
    stuck = wavs[5]
    real = audio.ClipReader.read

    def read(self, path, *a, **k):
        if str(path) == stuck:
            time.sleep(3600)
        return real(self, path, *a, **k)

    monkeypatch.setattr(audio.ClipReader, "read", read)  # inherited by the forked workers
    monkeypatch.setenv("AEKIT_STALL_TIMEOUT", "1.5")
    model = aekit.load_model(setup["model"])
    before = _children()
    t0 = time.monotonic()
    listing = setup["root"] / "list.txt"
    listing.write_text("".join(f"{w}\n" for w in wavs))
    with open(listing, "rb") as fh, \
            pytest.raises(DataError, match=f"^{stuck}: no progress for 1.5 s on this input"):
        list(aekit.score_files(model, LineReader(fh.fileno()), jobs=2))
    assert time.monotonic() - t0 < 30
    assert _children() <= before


def test_a_batch_too_large_to_pad_is_refused_before_any_work(setup):
    """Every batch is padded to --batch-size clips: one that would not fit is refused at
    once (before, a short run with --batch-size 10**9 held only its few clips)."""
    import aekit
    from aekit.errors import InputError

    with pytest.raises(InputError, match=r"batch size 100000000: a batch of clips \[2, 4, 10\] "
                                         r"would take 29\.8 GiB \(limit 2 GiB\)"):
        aekit.score_files(setup["model"], [setup["wavs"][0]], batch_size=10**8)
