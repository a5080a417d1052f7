"""Where two of issue 18's guarantees meet: an in-place log output rewritten every epoch, a
file name that is not UTF-8 in the stored command line, a signal during the final flush."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import h5py

from conftest import exe, write_features, write_tone


def test_train_log_to_a_stream_is_written_once_not_appended_every_epoch(tmp_path):
    """--log /dev/stdout is written in place (never replaced); rewriting the whole log after
    every epoch appended the header and every earlier row again: 4 headers for 3 epochs."""
    write_features(tmp_path / "f.h5", n=20)
    r = subprocess.run([exe("ae-train"), str(tmp_path / "f.h5"), "-o", str(tmp_path / "m.safetensors"),
                        "--epochs", "3", "--hidden", "8", "--latent", "2", "--log", "/dev/stdout",
                        "-q"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "epoch,train_loss,val_loss,lr,seconds,samples_per_s"
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3"]


def test_a_file_name_that_is_not_utf8_on_the_command_line_is_stored_escaped(tmp_path):
    """The command line is stored in the output's attributes: a name with the byte 0xff made
    h5py raise UnicodeEncodeError (a traceback) after the work was done."""
    good = write_tone(tmp_path / "a.wav")
    bad = os.fsencode(tmp_path) + b"/b\xff.wav"
    os.link(good, bad)
    out = tmp_path / "g.h5"
    r = subprocess.run([os.fsencode(exe("ae-featurize")), os.fsencode(good), bad, b"-o",
                        os.fsencode(out), b"-j", b"1", b"--num-samples", b"4096",
                        b"--max-fail-frac", b"0.5", b"-q"], capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert b"Traceback" not in r.stderr
    with h5py.File(out, "r") as f:
        command = f.attrs["command"]
        command = command.decode() if isinstance(command, bytes) else command
    assert "b\\xff.wav" in command


def test_a_signal_while_the_last_bytes_are_flushed_is_one_line(tmp_path):
    """SIGTERM inside run()'s final flush of stdout escaped as a Terminated traceback."""
    script = tmp_path / "t.py"
    script.write_text(textwrap.dedent("""
        import os, signal, sys
        from aekit.cmds import common

        def flush():
            os.kill(os.getpid(), signal.SIGTERM)

        @common.command("ae-t")
        def cli():
            sys.stdout.flush = flush
            raise common.CommandError("boom")

        common.run(cli, "ae-t")
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr) == (143, "ae-t: error: boom\nae-t: terminated (SIGTERM)\n")


def test_no_float_option_takes_nan():
    """click.FloatRange lets nan through its bounds (every comparison is false): ae-eval
    --max-fpr nan computed a pAUC over nothing and exited 0."""
    import click

    from aekit.cmds import eval as eval_cmd, split, synth, train
    from aekit.cmds.common import FiniteFloatRange, _FeatureParam

    for mod in (eval_cmd, split, synth, train):
        for p in mod.cli.params:
            kind = p.type.inner if isinstance(p.type, _FeatureParam) else p.type
            if isinstance(kind, click.FloatRange):
                assert isinstance(kind, FiniteFloatRange), (mod.__name__, p.name)
    r = subprocess.run([exe("ae-eval"), "--max-fpr", "nan", "m.safetensors", "f.h5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a finite number" in r.stderr, r.stderr
