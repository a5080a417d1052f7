"""Issue 18, item 4 and its neighbours: touch nothing that is not ours.

Devices, FIFOs and /dev/stdout are written in place (text) or refused (HDF5, models), never
replaced; a symbolic link is written through; empty paths and file paths ending in '/' are
usage errors in every path option of every command; ae-synth keeps out of directories it
did not make and refuses absurd sizes; stale-temporary cleanup removes only what it can
prove it made; ae-train's checkpoint files are outputs (collisions) and its directory is
locked; ae-eval --plots never overwrites an input; ae-encode on a full or read-only disk.

Never run against the real /dev/null or /dev/stdout: the old code replaced them (as root).
"""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys

import click
import pytest

from conftest import cli_of as _cli, exe, invoke, only_error_line as one_error_line, write_features
from conftest import write_model as _write_model

CSV = "id,c\n" + "".join(f"r{i},{i % 2}\n" for i in range(40))


def write_model(path, seed: int = 0):
    """conftest.write_model: a 16-4 model."""
    _write_model(path, hidden=(16,), latent=4, seed=seed)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture()
def csv_in(tmp_path):
    p = tmp_path / "in.csv"
    p.write_text(CSV)
    return p


@pytest.fixture()
def expected_split(csv_in):
    r = invoke("ae-split", [csv_in, "-q"])
    assert r.exit_code == 0, r.stderr
    return r.stdout


# --------------------------------------------------------------------------- special outputs

@pytest.fixture()
def nulldev(tmp_path):
    """Our own character device 1:3 (what /dev/null is), so the real one is never at risk."""
    dev = tmp_path / "nulldev"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot make a character device here: {exc}")
    return dev


def test_character_device_output_is_written_in_place_or_refused(tmp_path, csv_in, nulldev):
    feats = tmp_path / "f.h5"
    write_features(feats, n=4)
    r = invoke("ae-split", [csv_in, "-o", nulldev, "-q"])
    assert r.exit_code == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(nulldev).st_mode)  # the old code made it a regular file
    for name, args in [("ae-merge", [feats]), ("ae-train", [feats])]:
        r = invoke(name, [*args, "-o", nulldev, "-q"])
        assert r.exit_code == 2, r.stderr
        assert one_error_line(r.stderr, name) == (
            f"{name}: error: {nulldev}: not a regular file (a character device); "
            "-o/--output must be written to a regular file")
        assert stat.S_ISCHR(os.lstat(nulldev).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "in.csv", "nulldev"]


def test_fifo_output_is_written_in_place(tmp_path, csv_in, expected_split):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer's open never waits
    try:
        r = invoke("ae-split", [csv_in, "-o", fifo, "-q"])
        assert r.exit_code == 0, r.stderr
        data = b""
        while True:
            try:
                block = os.read(reader, 1 << 16)
            except BlockingIOError:
                break
            if not block:
                break
            data += block
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert data.decode() == expected_split
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "in.csv"]


def test_dev_stdout_like_link_is_written_to_stdout_not_replaced(tmp_path, csv_in, expected_split):
    """A link to /proc/self/fd/1 is what /dev/stdout is: the output goes to stdout."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    p = subprocess.run([exe("ae-split"), str(csv_in), "-o", str(link), "-q"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected_split
    assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"
    r = invoke("ae-merge", [csv_in, "-o", link, "-q"])  # this process's fd 1: pytest's
    assert r.exit_code == 2
    line = one_error_line(r.stderr, "ae-merge")
    assert line.startswith(f"ae-merge: error: {link}: not a regular file (a")
    assert line.endswith("); -o/--output must be written to a regular file")
    assert link.is_symlink()


def test_symlink_to_a_file_is_written_through_and_a_dangling_one_refused(tmp_path, csv_in,
                                                                          expected_split):
    real = tmp_path / "sub" / "real.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    r = invoke("ae-split", [csv_in, "-o", link, "-q"])
    assert r.exit_code == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link stays a link
    assert real.read_text() == expected_split
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "nowhere.csv")
    r = invoke("ae-split", [csv_in, "-o", dangling, "-q"])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-split") == \
        f"ae-split: error: {dangling}: a dangling symbolic link; not writing through it"
    assert not (tmp_path / "nowhere.csv").exists() and dangling.is_symlink()


def test_library_refuses_special_files_for_binary_outputs(nulldev):
    from aekit.errors import InputError
    from aekit.system.fileio import atomic_path

    with pytest.raises(InputError, match="not a regular file \\(a character device\\)"):
        with atomic_path(nulldev):
            pass
    with atomic_path(nulldev, special_ok=True) as p:
        assert p == nulldev
    assert stat.S_ISCHR(os.lstat(nulldev).st_mode)
    blk = nulldev.parent / "blk"   # a disk is never written, even by a text output
    os.mknod(blk, 0o600 | stat.S_IFBLK, os.makedev(7, 200))
    with pytest.raises(InputError, match="not a regular file \\(a block device\\); refusing"):
        with atomic_path(blk, special_ok=True):
            pass
    assert stat.S_ISBLK(os.lstat(blk).st_mode)


# --------------------------------------------------------------------------- empty paths

#: Minimal command lines: every required argument present (inputs need not exist: the
#: path checks run while the command line is parsed).
BASE = {
    "ae-featurize": ["a.wav", "-o", "o.h5"], "ae-merge": ["a.h5", "-o", "o.h5"],
    "ae-split": ["in.csv"], "ae-onehot": ["in.csv"], "ae-labels": ["in.csv"],
    "ae-train": ["f.h5", "-o", "m.safetensors"], "ae-encode": ["m.st", "f.h5", "-o", "z.h5"],
    "ae-eval": ["m.st", "f.h5"], "ae-score": ["m.st", "a.wav"], "ae-synth": ["outdir"], "ae-table": ["r.json"],
}


def _path_params(name):
    return [p for p in _cli(name).params if isinstance(p.type, click.Path)]


def _with(name, param, value):
    args = list(BASE[name])
    if isinstance(param, click.Argument):
        args_only = [p for p in _cli(name).params if isinstance(p, click.Argument)]
        args[args_only.index(param)] = value  # arguments come first in BASE, in order
        return args
    return args + [param.opts[0], value]


def test_every_path_parameter_refuses_an_empty_path(tmp_path, monkeypatch):
    from aekit.cmds.common import InputPath

    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.csv").write_text("mine\n")
    checked = 0
    for name in BASE:
        for param in _path_params(name):
            assert isinstance(param.type, InputPath), (name, param.name)
            r = invoke(name, _with(name, param, ""))
            assert r.exit_code == 2, (name, param.name, r.stderr, r.exception)
            assert one_error_line(r.stderr, name).endswith(": empty path"), (name, param.name)
            checked += 1
    assert checked == 42  # 11 commands (issue 19: + ae-eval --submission, --result-csv, ae-table -o; issue 20: + --ensemble of ae-eval and ae-score)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]
    assert (tmp_path / "labels.csv").read_text() == "mine\n"  # ae-synth '' replaced it


def test_file_paths_ending_in_slash_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checked = 0
    for name in BASE:
        for param in _path_params(name):
            if param.type.dir_okay:  # a directory may end in '/'
                continue
            r = invoke(name, _with(name, param, "newdir/"))
            assert r.exit_code == 2, (name, param.name, r.stderr, r.exception)
            assert one_error_line(r.stderr, name).endswith(
                "'newdir/' ends in '/': a directory, expected a file name"), (name, param.name)
            checked += 1
    assert checked == 31  # issue 19: + ae-eval --result-csv, ae-table -o; issue 20: + --ensemble (ae-eval, ae-score)
    assert list(tmp_path.iterdir()) == []  # no file named newdir


# --------------------------------------------------------------------------- ae-synth

SYN = ["--clips-per-machine", "1", "--machine-types", "fan", "--ids-per-type", "1",
       "--duration", "0.05", "--sample-rates", "8000", "-q"]


def test_synth_refuses_a_directory_it_did_not_make(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "labels.csv").write_text("my labels\n")
    r = invoke("ae-synth", [d, *SYN])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-synth") == (
        f"ae-synth: error: --force: needed to write into {d}, a non-empty directory that "
        "ae-synth did not make (no .ae-synth in it); or give an empty or new directory")
    assert (d / "labels.csv").read_text() == "my labels\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]
    new = tmp_path / "new"
    assert invoke("ae-synth", [new, *SYN]).exit_code == 0
    assert invoke("ae-synth", [new, *SYN]).exit_code == 0  # its own directory: written again
    assert (new / ".ae-synth").is_file()
    r = invoke("ae-synth", [d, *SYN, "--force"])
    assert r.exit_code == 0, r.stderr
    assert (d / "labels.csv").read_text().startswith("id,")


def test_synth_refuses_absurd_sizes_before_any_work(tmp_path):
    out = tmp_path / "big"
    p = subprocess.run([exe("ae-synth"), str(out), "--clips-per-machine", "1000000000", "-q"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert one_error_line(p.stderr, "ae-synth") == (
        "ae-synth: error: 12,000,000,000 clips (1,000,000,000 per machine x 3 ids x 4 types) "
        "is more than ae-synth makes (2,000,000 at most)")
    r = invoke("ae-synth", [out, "--clips-per-machine", "100000", "--duration", "600"])
    assert r.exit_code == 2
    assert "1,200,000 clips of 600 s need about 55.8 TB but" in one_error_line(r.stderr, "ae-synth")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- stale temporaries

def test_stale_cleanup_never_removes_an_input_file_or_directory(tmp_path, tone):
    from aekit.system.fileio import _host

    host, pid = _host(), dead_pid()
    # ae-merge: an input named exactly like a dead run's temporary of -o, private mode too
    shard = tmp_path / f".out.h5.{host}-{pid}.abcd_123.tmp"
    write_features(shard, n=4)
    shard.chmod(0o600)
    r = invoke("ae-merge", [shard, "-o", tmp_path / "out.h5", "-q"])
    assert r.exit_code == 0, r.stderr
    assert shard.is_file() and (tmp_path / "out.h5").is_file()
    # ae-featurize: an input directory named like a temporary of -o
    audio = tmp_path / f".f.h5.{host}-{pid}.abcd_123.tmp"
    tone(audio / "a.wav", sr=8000, seconds=0.3)
    r = invoke("ae-featurize", [audio, "-o", tmp_path / "f.h5", "-q", "-j", "1",
                                "--sample-rate", "8000", "--num-samples", "2000"])
    assert r.exit_code == 0, r.stderr
    assert (audio / "a.wav").is_file()


def test_stale_cleanup_removes_only_what_it_made(tmp_path):
    from aekit.system.fileio import _host, atomic_dir, atomic_path

    host, pid = _host(), dead_pid()
    ours = tmp_path / f".o.csv.{host}-{pid}.a1b2c3d4.tmp"
    shared = tmp_path / f".o.csv.{host}-{pid}.e5f6g7h8.tmp"   # group-readable: not mkstemp's
    odd = tmp_path / f".o.csv.{host}-{pid}.x.tmp"              # not mkstemp's name shape
    for p in (ours, shared, odd):
        p.write_text("x")
    ours.chmod(0o600)
    shared.chmod(0o640)
    odd.chmod(0o600)
    with atomic_path(tmp_path / "o.csv") as tmp:
        tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o.csv", shared.name, odd.name])
    # directories: only one holding atomic_dir's marker
    mine = tmp_path / f".d.{host}-{pid}.a1b2c3d4.tmp"
    theirs = tmp_path / f".d.{host}-{pid}.e5f6g7h8.tmp"
    for d in (mine, theirs):
        d.mkdir()
        (d / "data.wav").write_text("x")
    (mine / ".aekit-partial").write_text("")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("y")
    assert not mine.exists() and (theirs / "data.wav").is_file()
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["x"]


# --------------------------------------------------------------------------- ae-train

TRAIN = ["--hidden", "16", "--latent", "4", "--epochs", "1", "--device", "cpu", "-q"]


def test_train_checkpoint_files_are_outputs_too(tmp_path):
    d = tmp_path / "D"
    d.mkdir()
    feats = d / "last.pt"
    write_features(feats, n=8)
    before = feats.read_bytes()
    r = invoke("ae-train", [feats, "--checkpoint-dir", d, "-o", tmp_path / "m.safetensors",
                            *TRAIN])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-train") == (
        f"ae-train: error: checkpoint {d / 'last.pt'} is the same file as input FEATURES "
        f"{feats}: refusing to overwrite an input; choose another output")
    assert feats.read_bytes() == before
    f2 = tmp_path / "f.h5"
    write_features(f2, n=8)
    out = tmp_path / "m.safetensors"
    r = invoke("ae-train", [f2, "-o", out, "--log", f"{out}.ckpt/last.pt", *TRAIN])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-train") == (
        f"ae-train: error: --log and checkpoint name the same file ({out}.ckpt/last.pt); "
        "give each output its own")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "f.h5"]


def test_train_run_owns_its_checkpoint_directory(tmp_path):
    LOCK_NAME = ".ae-train.lock"  # aekit.train.checkpoint.LOCK_NAME, as documented

    feats = tmp_path / "f.h5"
    write_features(feats, n=8)
    out = tmp_path / "m.safetensors"
    ckdir = tmp_path / "m.safetensors.ckpt"
    ckdir.mkdir()
    with open(ckdir / LOCK_NAME, "w") as held:   # another run's lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = invoke("ae-train", [feats, "-o", out, *TRAIN])
        assert r.exit_code == 1
        assert one_error_line(r.stderr, "ae-train") == (
            f"ae-train: error: checkpoint directory {ckdir} is in use by another ae-train run "
            f"(it holds {ckdir / LOCK_NAME}); wait for it to end, or give this run its own output "
            "or checkpoint directory")
        assert sorted(p.name for p in ckdir.iterdir()) == [LOCK_NAME] and not out.exists()
    r = invoke("ae-train", [feats, "-o", out, *TRAIN])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in ckdir.iterdir()) == ["last.pt"]  # lock released and removed


# --------------------------------------------------------------------------- ae-eval --plots

def test_eval_refuses_plots_over_an_input(tmp_path):
    write_model(tmp_path / "m.safetensors")
    write_features(tmp_path / "f.h5", n=6)
    plots = tmp_path / "plots"
    plots.mkdir()
    labels = plots / "scores.png"          # a CSV whose name is a plot's
    labels.write_text("id,anomaly\n" + "".join(f"clip{i:03d},{i % 2}\n" for i in range(6)))
    before = labels.read_text()
    r = invoke("ae-eval", [tmp_path / "m.safetensors", tmp_path / "f.h5", "--labels", labels,
                           "--plots", plots, "-o", tmp_path / "r.json", "-q"])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-eval") == (
        f"ae-eval: error: --plots {labels} is the same file as input --labels {labels}: "
        "refusing to overwrite an input; choose another output")
    assert labels.read_text() == before and not (tmp_path / "r.json").exists()


# --------------------------------------------------------------------------- ae-encode

def test_encode_on_a_full_or_read_only_disk(tmp_path, small_fs):
    write_model(tmp_path / "m.safetensors")
    write_features(tmp_path / "f.h5", n=3000)   # 3000 x 4 float32 + ids: more than fits
    (small_fs / "fill").write_bytes(b"\0" * 150_000)
    out = small_fs / "z.h5"
    args = [exe("ae-encode"), str(tmp_path / "m.safetensors"), str(tmp_path / "f.h5"),
            "-o", str(out), "-q", "--batch-size", "64"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr[-2000:]   # not 139: a segfault at exit
    assert one_error_line(p.stderr, "ae-encode") == \
        f"ae-encode: error: cannot write {out}: No space left on device"
    assert sorted(x.name for x in small_fs.iterdir()) == ["fill"]  # no .tmp left
    (small_fs / "fill").unlink()
    q = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if q.returncode != 0:
        pytest.skip("cannot remount read-only")
    r = invoke("ae-encode", args[1:])
    assert r.exit_code == 1, r.stderr   # was 2: "directory ... is not writable"
    assert one_error_line(r.stderr, "ae-encode") == \
        f"ae-encode: error: cannot write {out}: Read-only file system"
    assert list(small_fs.iterdir()) == []
