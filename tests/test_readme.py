"""The README cannot rot: its example runs, its tables match the code."""

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from aekit.data import store
from aekit.cmds import common

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_commands_table_matches_console_scripts():
    scripts = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
    documented = set(re.findall(r"^\| `(ae-[a-z]+)` \|", README, flags=re.M))
    assert documented == scripts


def test_exit_code_table_matches_common_module():
    table = dict(re.findall(r"^\| (\d) \| (.+?) \|$", README, flags=re.M))
    assert set(table) == {"0", "1", "2", "3"}
    doc = common.__doc__
    for code in table:
        assert re.search(rf"^\s+{code}\s+\S", doc, flags=re.M), code


def test_features_layout_is_documented():
    for name in ("features", "ids", "paths", *store.PER_CLIP, "failed/paths"):
        assert f"`/{name}`" in README, name
    for key in store.FEATURE_PARAM_KEYS:
        assert f"`{key}`" in README, key


def test_no_placeholders_left():
    assert not re.search(r"\b(TODO|TBD|XXX|[A-Z]+_(RESULTS|TABLE|MINUTES))\b", README)


@pytest.mark.slow
def test_readme_example_runs(tmp_path, env_bin):
    block = re.search(r"<!-- readme-example: begin -->\n```sh\n(.*?)```", README, flags=re.S).group(1)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env_bin,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "anomaly.auc" in p.stdout  # the summary table
    assert p.stdout.strip().splitlines()[-3].startswith("id,")  # the piped split | onehot
    assert "split_test" in p.stdout.strip().splitlines()[-3]
    for f in ("features.h5", "splits.csv", "cats.json", "model.0.safetensors", "latents.h5",
              "report.1.json"):
        assert (tmp_path / f).stat().st_size > 0, f
