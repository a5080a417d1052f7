"""The contract every ae-* command keeps (csvkit-style): one test, applied to every command.

* --help exits 0 on stdout, with a usage line, an example and "See also"
* importing a command module does not import torch (so --help is instant)
* a missing input exits 2 with one line "ae-xxx: error: ..." on stderr, no traceback
* an unknown option exits 2
* the installed executable exists and behaves the same in a real process
"""

import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import cli_of, exe

COMMANDS = {
    # name: (module, arguments naming a missing input)
    "ae-featurize": ("featurize", ["missing.wav", "-o", "out.h5"]),
    "ae-merge": ("merge", ["missing.h5", "-o", "out.h5"]),
    "ae-split": ("split", ["missing.csv"]),
    "ae-onehot": ("onehot", ["missing.csv", "-c", "x"]),
    "ae-train": ("train", ["missing.h5", "-o", "model.safetensors"]),
    "ae-encode": ("encode", ["missing.safetensors", "missing.h5", "-o", "latents.h5"]),
    "ae-eval": ("eval", ["missing.safetensors", "missing.h5"]),
    "ae-score": ("score", ["missing.safetensors", "missing.wav"]),
    "ae-synth": ("synth", None),
    "ae-labels": ("labels", ["missing.h5", "--preset", "dcase2020"]),
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help(name):
    r = CliRunner().invoke(cli_of(name), ["--help"], prog_name=name)
    assert r.exit_code == 0
    assert r.stdout.startswith(f"Usage: {name} ")
    assert "Example" in r.stdout and "See also" in r.stdout
    see_also = r.stdout.split("See also", 1)[1]
    assert set(re.findall(r"ae-[a-z]+", see_also)) - {name}, "See also names no sibling"
    assert r.stderr == ""


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_import_is_light(name):
    code = (f"import sys, aekit.cmds.{COMMANDS[name][0]}; "
            "bad = [m for m in ('torch', 'torchaudio', 'sklearn', 'matplotlib') if m in sys.modules]; "
            "print(', '.join(bad), file=sys.stderr); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, f"importing {name} pulls in: {p.stderr.strip()}"


@pytest.mark.parametrize("name", sorted(n for n, (_, a) in COMMANDS.items() if a))
def test_missing_input_is_a_one_line_usage_error(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli_of(name), COMMANDS[name][1])
    assert r.exit_code == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and errors[0].startswith(f"{name}: error: "), r.stderr
    assert "missing" in errors[0]
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_unknown_option_is_usage_error(name):
    r = CliRunner().invoke(cli_of(name), ["--no-such-option"])
    assert r.exit_code == 2
    assert "No such option" in r.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_installed_executable(name, tmp_path):
    p = subprocess.run([exe(name), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and "See also" in p.stdout
    args = COMMANDS[name][1]
    if args:
        p = subprocess.run([exe(name), *args], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2
        assert p.stderr.strip().splitlines()[-1].startswith(f"{name}: error: ")
        assert "Traceback" not in p.stderr


def test_closed_stdout_is_not_an_error(tmp_path, env_bin):
    """`| head` on a large output: no traceback, and exit 0 even under pipefail."""
    rows = "\n".join(f"r{i},{'abc'[i % 3]}" for i in range(50_000))
    (tmp_path / "big.csv").write_text("id,c\n" + rows + "\n")
    for cmd in ("ae-onehot big.csv -c c", "ae-split big.csv"):
        p = subprocess.run(["bash", "-o", "pipefail", "-c", f"{cmd} -q | head -1"], cwd=tmp_path,
                           env=env_bin, capture_output=True, text=True)
        assert p.returncode == 0, (cmd, p.stderr)
        assert p.stderr == "" and p.stdout.startswith(("id,", "id\n"))
