"""Issue 9 (part A): nothing is destroyed, nothing wrong passes silently, failures are one line.

* an output naming an input (or another output) is refused before any work, exit 2
* '-o -' is refused for HDF5 and model outputs
* parser errors, Ctrl-C and signals are one line; --version everywhere
* a full disk is "ae-xxx: error: cannot write OUT: No space left on device", exit 1, the
  previous output untouched, no temporary left, no segfault
* SIGTERM/SIGHUP clean up like Ctrl-C; stale temporaries of dead runs are removed
* clearer messages: permission denied, not a regular file, non-UTF-8 stdin, checkpoints
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from aekit import __version__
from conftest import cli_of as cli, exe, only_error_line as one_error_line

CMDS = ["ae-featurize", "ae-merge", "ae-split", "ae-onehot", "ae-train", "ae-encode", "ae-eval",
        "ae-synth"]


def snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(d.rglob("*"))}


# --------------------------------------------------------------------------- never destroy

@pytest.fixture
def files(tmp_path, monkeypatch):
    """Dummy inputs: the refusal comes before any of them is read."""
    monkeypatch.chdir(tmp_path)
    for name, text in {"M.safetensors": "model", "F.h5": "features", "G.h5": "shard",
                       "in.csv": "id,c\na,x\n", "lab.csv": "id,c\na,x\n", "cats.json": "{}",
                       "x.wav": "wav", "log.csv": "epoch\n"}.items():
        Path(name).write_text(text)
    os.mkdir("sub")
    os.symlink("F.h5", "link.h5")
    return tmp_path


CLOBBER = [
    ("ae-encode", ["M.safetensors", "F.h5", "-o", "F.h5"]),
    ("ae-encode", ["M.safetensors", "F.h5", "-o", "M.safetensors"]),
    ("ae-encode", ["M.safetensors", "F.h5", "-o", "link.h5"]),          # through a symlink
    ("ae-encode", ["M.safetensors", "link.h5", "-o", "sub/../F.h5"]),   # another spelling
    ("ae-eval", ["M.safetensors", "F.h5", "-o", "M.safetensors"]),
    ("ae-eval", ["M.safetensors", "F.h5", "--scores", "F.h5"]),
    ("ae-eval", ["M.safetensors", "F.h5", "--log", "log.csv", "--scores", "./log.csv"]),
    ("ae-eval", ["M.safetensors", "F.h5", "-o", "r.json", "--scores", "r.json"]),
    ("ae-eval", ["--summarize", "in.csv", "lab.csv", "-o", "lab.csv"]),
    ("ae-train", ["F.h5", "-o", "F.h5"]),
    ("ae-train", ["F.h5", "-o", "m.st", "--log", "F.h5"]),
    ("ae-train", ["F.h5", "-o", "m.st", "--log", "m.st"]),
    ("ae-train", ["F.h5", "-o", "m.st", "--labels", "lab.csv", "--log", "lab.csv"]),
    ("ae-onehot", ["in.csv", "-c", "c", "-o", "in.csv"]),
    ("ae-onehot", ["in.csv", "-c", "c", "--save-categories", "in.csv"]),
    ("ae-onehot", ["in.csv", "-c", "c", "-o", "o.csv", "--save-categories", "o.csv"]),
    ("ae-onehot", ["in.csv", "--categories", "cats.json", "-o", "cats.json"]),
    ("ae-split", ["in.csv", "-o", "in.csv"]),
    ("ae-split", ["in.csv", "--labels", "lab.csv", "-o", "lab.csv"]),
    ("ae-merge", ["F.h5", "G.h5", "-o", "G.h5"]),
    ("ae-featurize", ["x.wav", "-o", "x.wav"]),
]


@pytest.mark.parametrize("name,args", CLOBBER, ids=[" ".join([n, *a]) for n, a in CLOBBER])
def test_an_output_never_replaces_an_input(name, args, files):
    before = snapshot(files)
    r = CliRunner().invoke(cli(name), args)
    assert r.exit_code == 2, r.stderr
    line = one_error_line(r.stderr, name)
    assert "same file" in line, line
    assert snapshot(files) == before  # nothing replaced, nothing written


def test_an_output_redirected_to_stdin_is_refused(files, env_bin):
    before = snapshot(files)
    with open("in.csv", "rb") as stdin:
        p = subprocess.run([exe("ae-onehot"), "-", "-c", "c", "-o", "in.csv"], stdin=stdin,
                           capture_output=True, text=True, cwd=files)
    assert p.returncode == 2
    assert "same file as stdin" in one_error_line(p.stderr, "ae-onehot")
    assert snapshot(files) == before


@pytest.mark.parametrize("name,args", [
    ("ae-featurize", ["x.wav"]), ("ae-merge", ["F.h5"]), ("ae-encode", ["M.safetensors", "F.h5"]),
    ("ae-train", ["F.h5"])])
def test_binary_output_to_stdout_is_refused(name, args, files):
    before = snapshot(files)
    r = CliRunner().invoke(cli(name), [*args, "-o", "-"])
    assert r.exit_code == 2
    assert "cannot be written to stdout" in one_error_line(r.stderr, name)
    assert snapshot(files) == before and not Path("-").exists()


# --------------------------------------------------------------------------- one line

@pytest.mark.parametrize("name,args,words", [
    ("ae-split", ["in.csv", "--folds", "x"], "--folds"),
    ("ae-train", ["F.h5"], "Missing option '-o'"),
    ("ae-train", ["F.h5", "-o", "sub"], "directory"),
    ("ae-train", ["F.h5", "-o", "m.st", "--hidden", "8,x"], "--hidden"),
    ("ae-onehot", ["in.csv", "-c", "c", "--handle-unknown", "maybe"], "--handle-unknown"),
    ("ae-eval", [], "Missing argument"),
])
def test_parser_errors_are_one_line(name, args, words, files):
    r = CliRunner().invoke(cli(name), args)
    assert r.exit_code == 2
    assert words in one_error_line(r.stderr, name)
    assert "Usage:" not in r.stderr and "Try " not in r.stderr


@pytest.mark.parametrize("name", CMDS)
def test_version(name):
    r = CliRunner().invoke(cli(name), ["--version"])
    assert r.exit_code == 0
    assert r.stdout == f"{name} (aekit) {__version__}\n"


def test_help_is_unchanged_by_the_one_line_errors():
    r = CliRunner().invoke(cli("ae-split"), ["--help"])
    assert r.exit_code == 0 and r.stdout.startswith("Usage: ae-split") and r.stderr == ""


@pytest.mark.parametrize("name", ["ae-split", "ae-onehot"])
def test_non_utf8_csv_same_message_by_path_and_stdin(name, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"id,c\na,\xff\xfe\n")
    extra = (["-c", "c"] if name == "ae-onehot" else []) + ["-q"]
    by_path = subprocess.run([exe(name), "bad.csv", *extra], cwd=tmp_path, capture_output=True,
                             text=True)
    with open(bad, "rb") as fh:
        by_stdin = subprocess.run([exe(name), "-", *extra], cwd=tmp_path, stdin=fh,
                                  capture_output=True, text=True)
    a, b = one_error_line(by_path.stderr, name), one_error_line(by_stdin.stderr, name)
    assert by_path.returncode == by_stdin.returncode == 2
    assert "not UTF-8 text" in a
    assert a.replace("bad.csv", "<stdin>") == b


def test_fifo_is_not_a_regular_file_for_hdf5_and_model_inputs(files):
    os.mkfifo("pipe.h5")
    for name, args in [("ae-train", ["pipe.h5", "-o", "m.st"]),
                       ("ae-merge", ["pipe.h5", "-o", "out.h5"]),
                       ("ae-encode", ["pipe.h5", "F.h5", "-o", "out.h5"]),
                       ("ae-eval", ["M.safetensors", "pipe.h5"])]:
        r = CliRunner().invoke(cli(name), args)  # would block forever if it opened the FIFO
        assert r.exit_code == 2
        assert "pipe.h5: not a regular file (a FIFO)" in one_error_line(r.stderr, name)


def test_csv_inputs_may_still_be_pipes(files):
    os.mkfifo("pipe.csv")

    def feed():
        with open("pipe.csv", "w") as fh:
            fh.write("id,c\na,x\nb,y\n")

    t = threading.Thread(target=feed)
    t.start()
    r = CliRunner().invoke(cli("ae-onehot"), ["pipe.csv", "-c", "c"])
    t.join(10)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == "id,c_x,c_y\na,1,0\nb,0,1\n"


def test_permission_denied_message_mapping():
    from aekit.system.fileio import describe_os_error

    exc = PermissionError(errno.EACCES, "Permission denied", "secret.h5")
    assert describe_os_error(exc) == "secret.h5: permission denied"
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device", "o.h5")) == \
        "cannot write o.h5: No space left on device"


def test_permission_error_inside_a_command_is_one_line(files, monkeypatch):
    import aekit.data.split

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", "in.csv")

    monkeypatch.setattr(aekit.data.split, "load_split_input", denied)
    r = CliRunner().invoke(cli("ae-split"), ["in.csv"])
    assert r.exit_code == 2
    assert one_error_line(r.stderr, "ae-split") == "ae-split: error: in.csv: permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_says_permission_denied(files):
    os.chmod("F.h5", 0)
    r = CliRunner().invoke(cli("ae-train"), ["F.h5", "-o", "m.st"])
    assert r.exit_code == 2
    assert "F.h5: permission denied" in one_error_line(r.stderr, "ae-train")


def test_unsafe_checkpoint_does_not_advise_turning_safety_off(tmp_path):
    import datetime

    import torch

    from aekit.errors import InputError
    from aekit.train.loop import load_checkpoint

    path = tmp_path / "last.pt"
    torch.save({"format": "x", "when": datetime.datetime(2020, 1, 1)}, path)
    with pytest.raises(InputError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: not a readable checkpoint")
    assert "weights_only" not in msg and "trust" not in msg.lower(), msg


def test_state_dict_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    from aekit.errors import InputError
    from aekit.models.modelfile import Normalizer, load_model, save_model
    from aekit.models.mlp import AEConfig
    from aekit.models.registry import build_model

    cfg = AEConfig(arch="baseline", input_shape=(1, 2, 3), hidden=(4,), latent=2)
    path = tmp_path / "m.safetensors"
    save_model(path, build_model(cfg), Normalizer("none", 6), {})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.startswith("model.") and tensors[k].dim() == 2)
    want = list(tensors[name].shape)
    tensors[name] = torch.zeros(want[0] + 1, want[1])
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(InputError) as err:
        load_model(path)
    msg = str(err.value)
    assert name[len("model."):] in msg
    assert str([want[0] + 1, want[1]]) in msg and str(want) in msg, msg


# --------------------------------------------------------------------------- full disk

def test_write_failure_is_one_error_and_leaves_nothing(tmp_path):
    """ENOSPC simulated: WriteError naming the output, the old output kept, no temporary."""
    from aekit.system.fileio import WriteError, atomic_path

    out = tmp_path / "out.csv"
    out.write_text("old")
    with pytest.raises(WriteError) as err:
        with atomic_path(out) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value) == f"cannot write {out}: No space left on device"
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]


def test_h5py_style_write_failure_is_recognised():
    from aekit.system.fileio import write_errno

    assert write_errno(OSError("Can't write data (file write failed: errno = 28, error message "
                               "= 'No space left on device')")) == errno.ENOSPC
    assert write_errno(RuntimeError("I/O error: No space left on device (os error 28)")) == errno.ENOSPC
    assert write_errno(OSError(errno.ENOENT, "No such file")) is None


def _audio(tmp_path, tone, n=4):
    for i in range(n):
        tone(tmp_path / "audio" / f"c{i}.wav", sr=8000, seconds=0.5, seed=i)
    return tmp_path / "audio"


def test_full_disk_is_one_line_for_hdf5_writers(tmp_path, tone, small_fs):
    audio = _audio(tmp_path, tone)
    feats = tmp_path / "feats.h5"
    p = subprocess.run([exe("ae-featurize"), str(audio), "-o", str(feats), "-q", "-j", "1"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for name, args in [("ae-featurize", [str(audio), "-j", "1"]),
                       ("ae-featurize", [str(audio), "-j", "2"]),
                       ("ae-merge", [str(feats)])]:
        out = small_fs / "out.h5"
        out.write_text("previous")
        p = subprocess.run([exe(name), *args, "-o", str(out), "-q"], capture_output=True, text=True)
        assert p.returncode == 1, (name, p.returncode, p.stderr[-2000:])  # not 139 (segfault)
        assert one_error_line(p.stderr, name) == \
            f"{name}: error: cannot write {out}: No space left on device"
        assert out.read_text() == "previous"
        assert sorted(x.name for x in small_fs.iterdir()) == ["out.h5"]


def test_full_disk_is_one_line_for_text_and_directory_writers(tmp_path, small_fs):
    (small_fs / "fill").write_bytes(b"\0" * (256 * 1024 - 8192))
    (tmp_path / "in.csv").write_text("id,c\n" + "".join(f"r{i},{'ab'[i % 2]}\n" for i in range(3000)))
    out = small_fs / "out.csv"
    out.write_text("previous")
    for name, args in [("ae-split", [str(tmp_path / "in.csv"), "-o", str(out)]),
                       ("ae-onehot", [str(tmp_path / "in.csv"), "-c", "c", "-o", str(out)])]:
        p = subprocess.run([exe(name), *args, "-q"], capture_output=True, text=True)
        assert p.returncode == 1, p.stderr
        assert one_error_line(p.stderr, name) == \
            f"{name}: error: cannot write {out}: No space left on device"
        assert out.read_text() == "previous"
    syn = small_fs / "synth"
    # Small enough that ae-synth's size check (audio bytes vs free space) lets it start; the
    # file system's 4 KiB pages per file then fill the disk.
    p = subprocess.run([exe("ae-synth"), str(syn), "--clips-per-machine", "1", "--machine-types",
                        "fan", "--sample-rates", "8000", "--duration", "0.05", "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    assert one_error_line(p.stderr, "ae-synth") == \
        f"ae-synth: error: cannot write {syn}: No space left on device"
    assert sorted(x.name for x in small_fs.iterdir()) == ["fill", "out.csv"]  # no partial dir


def test_synth_directory_appears_complete_or_not_at_all(tmp_path, monkeypatch):
    """A failure half-way through leaves no directory (the old code left a partial one)."""
    import aekit.audio.synth

    real = aekit.audio.synth.generate

    def fail_after_writing(root, **kw):
        Path(root, "fan").mkdir(parents=True)
        Path(root, "fan", "half.wav").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(aekit.audio.synth, "generate", fail_after_writing)
    r = CliRunner().invoke(cli("ae-synth"), [str(tmp_path / "demo")])
    assert r.exit_code == 1
    assert "cannot write" in one_error_line(r.stderr, "ae-synth")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(aekit.audio.synth, "generate", real)


# --------------------------------------------------------------------------- signals

SLOW = r"""
import sys, time
import aekit.audio.featurize, aekit.data.store
real_process, real_append = aekit.audio.featurize._process, aekit.data.store.FeatureWriter.append
def _process(task, *a):
    out = real_process(task, *a)
    time.sleep(60)
    return out
_process.__module__, _process.__qualname__ = "aekit.audio.featurize", "_process"
aekit.audio.featurize._process = _process
def append(self, *a, **k):
    real_append(self, *a, **k)
    time.sleep(60)
aekit.data.store.FeatureWriter.append = append
from aekit.cmds import {mod}
sys.argv[0] = "ae-{mod}"
{mod}.main()
"""


def _run_and_signal(tmp_path, mod, args, sig):
    out = tmp_path / "out.h5"
    out.write_text("previous")
    proc = subprocess.Popen([sys.executable, "-c", SLOW.format(mod=mod), *args, "-o", str(out)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.h5.*.tmp")):  # the output is being written
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # workers started and busy
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr, out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT],
                         ids=["SIGTERM", "SIGHUP", "SIGINT"])
@pytest.mark.parametrize("mod", ["featurize", "merge"])
def test_signal_cleans_up(tmp_path, tone, mod, sig):
    audio = _audio(tmp_path, tone, n=6)
    if mod == "featurize":
        args = [str(audio), "-j", "2", "-q"]
    else:
        feats = tmp_path / "feats.h5"
        subprocess.run([exe("ae-featurize"), str(audio), "-o", str(feats), "-q", "-j", "1"],
                       check=True)
        args = [str(feats), "-q"]
    code, stderr, out = _run_and_signal(tmp_path, mod, args, sig)
    expected = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)",
                signal.SIGHUP: "terminated (SIGHUP)"}[sig]
    assert code == 128 + sig, stderr
    assert stderr.strip().splitlines() == [f"ae-{mod}: {expected}"], stderr  # workers quiet too
    assert out.read_text() == "previous"
    assert not list(tmp_path.glob(".out.h5.*")), "temporary left behind"


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path):
    from aekit.system.fileio import _host, atomic_path

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _host()
    # mkstemp's names (8 random characters) and mode (0600): what a killed run leaves
    stale = tmp_path / f".out.h5.{host}-{dead.pid}.abc123_z.tmp"
    alive = tmp_path / f".out.h5.{host}-{os.getppid()}.def456_z.tmp"
    other_host = tmp_path / f".out.h5.elsewhere-{dead.pid}.ghi789_z.tmp"
    other_output = tmp_path / f".other.h5.{host}-{dead.pid}.jkl012_z.tmp"
    for p in (stale, alive, other_host, other_output):
        p.write_text("x")
        p.chmod(0o600)
    with atomic_path(tmp_path / "out.h5") as tmp:
        tmp.write_text("new")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert stale.name not in names
    assert {alive.name, other_host.name, other_output.name, "out.h5"} <= set(names)
    assert (tmp_path / "out.h5").read_text() == "new"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")
def test_workers_do_not_outlive_a_killed_parent_and_the_next_run_cleans_up(tmp_path, tone):
    """SIGKILL (no handler can run): the workers die with the parent, quietly; the
    temporary it left is removed by the next run that writes the same output."""
    from aekit.system.fileio import atomic_path

    audio = _audio(tmp_path, tone, n=20)  # 3 tasks of 8 files: a real pool
    out = tmp_path / "out.h5"
    proc = subprocess.Popen([sys.executable, "-c", SLOW.format(mod="featurize"), str(audio),
                             "-j", "2", "-q", "-o", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def children():
        p = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True,
                           text=True)
        return [int(x) for x in p.stdout.split()]

    deadline = time.monotonic() + 60
    while len(children()) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = children()
    proc.kill()
    _, stderr = proc.communicate(timeout=30)
    deadline = time.monotonic() + 20
    try:
        while any(_state(w) != "Z" for w in workers):
            assert time.monotonic() < deadline, f"orphaned workers still running: {workers}"
            time.sleep(0.05)
    finally:
        for w in workers:  # do not leave orphans behind when the test fails
            if _state(w) != "Z":
                os.kill(w, signal.SIGKILL)
    assert "Traceback" not in stderr
    left = list(tmp_path.glob(".out.h5.*.tmp"))
    assert len(left) == 1  # SIGKILL: nothing could clean up
    with atomic_path(out) as tmp:
        tmp.write_text("next run")
    assert not list(tmp_path.glob(".out.h5.*.tmp"))
    assert out.read_text() == "next run"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
