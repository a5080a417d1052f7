"""The README's "How to add a metric", followed literally: one new module + one registration,
and the section appears in ae-eval's report, in --summarize and in --table."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest

from aekit.cmds.eval import cli
from aekit.cmds.table import cli as table_cli
from aekit.evaluate import sections
from conftest import PARAMS, SHAPE, invoke, one_error_line, write_features, write_model

N = 24

#: The new module, exactly as the README says: a compute function, a check of the label
#: column it needs (before the forward passes), and one MetricSection.
MODULE = '''
"""A throwaway metric: how far the anomalous clips' scores lie above the normal ones'."""

import numpy as np

from aekit.errors import InputError
from aekit.evaluate.sections import MetricSection


def check(ctx):
    if "machine" not in ctx.labels.table.columns:
        raise InputError("the gap metric needs a machine column")
    ctx.labels.extra["machines"] = ctx.labels.table.loc[ctx.ids, "machine"].to_numpy()


def _gap(y, s):
    return float(s[y == 1].mean() - s[y == 0].mean())


def compute(ctx):
    y, s, m = ctx.labels.anomaly, ctx.score, ctx.labels.extra["machines"]
    return {"count": int(y.size), "weight": 2.5, "machines": len(set(m)),
            "gap": _gap(y, s),
            "per_machine": {k: _gap(y[m == k], s[m == k]) for k in sorted(set(m))}}


def table(section, file_type):
    return {(file_type or "all", k): {"gap": v} for k, v in section["per_machine"].items()}


SECTION = MetricSection(name="gap", compute=compute, check=check, needs=("anomaly_column",),
                        settings=frozenset({"weight"}), schema="{count, weight, machines, gap}",
                        done=lambda s: f"gap {s['gap']:.3f}", table=table,
                        table_key="machine")
'''


def _dataset(d, seed=0):
    rng = np.random.default_rng(seed)
    anomaly = (np.arange(N) % 3 == 0).astype(int)
    x = (-40 + rng.normal(0, 4, (N, *SHAPE)) * np.where(anomaly, 3.0, 1.0)[:, None, None, None])
    x = x.astype(np.float32)
    ids, _ = write_features(d / "f.h5", params={**PARAMS, "n_mels": SHAPE[1]}, x=x)
    write_model(d / "m.safetensors", x, hidden=(16,), latent=4, seed=seed, history=None)
    machine = np.array(["fan", "pump"])[np.arange(N) % 2]
    pd.DataFrame({"id": ids, "anomaly": anomaly, "machine": machine}).to_csv(
        d / "labels.csv", index=False)
    return anomaly


@pytest.fixture()
def gap_metric(tmp_path, monkeypatch):
    """The new module on the path, and the one registration (a line of sections.MODULES)."""
    (tmp_path / "gap_metric21.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sections, "MODULES", sections.MODULES + ("gap_metric21:SECTION",))
    return tmp_path


def _eval(d, *extra, labels="labels.csv"):
    return invoke(cli, [d / "m.safetensors", d / "f.h5", "--labels", d / labels,
                        "--anomaly-column", "anomaly", "--score", "mse", *extra],
                  prog_name="ae-eval")


def test_new_section_in_report_summary_and_table(gap_metric):
    d = gap_metric
    anomaly = _dataset(d)
    r = _eval(d, "--scores", d / "s.csv", "-o", d / "r1.json")
    assert r.exit_code == 0, r.stderr
    rep = json.loads((d / "r1.json").read_text())
    mse = pd.read_csv(d / "s.csv")["mse"].to_numpy()
    want = float(mse[anomaly == 1].mean() - mse[anomaly == 0].mean())
    assert rep["gap"]["gap"] == pytest.approx(want, rel=1e-5)
    assert rep["gap"]["count"] == N and rep["gap"]["machines"] == 2 and rep["gap"]["weight"] == 2.5
    assert list(rep)[-1] == "gap"  # after the built-in sections, in registry order
    assert f"gap {want:.3f}" in r.stderr  # the section's part of the closing log line

    t = _eval(d, "--table")  # one report as a table: headline keys only
    assert t.exit_code == 0, t.stderr
    rows = dict(line.split() for line in t.stdout.splitlines())
    assert float(rows["gap.gap"]) == pytest.approx(want, rel=1e-5)
    assert rows["gap.machines"] == "2"
    assert "gap.count" not in rows and "gap.weight" not in rows  # detail, and a setting

    # a second report: the same model on the fan clips only (anomalous and normal ones)
    r2 = _eval(d, "--where", "machine == 'fan'", "-o", d / "r2.json")
    assert r2.exit_code == 0, r2.stderr
    gap2 = json.loads((d / "r2.json").read_text())["gap"]["gap"]
    s = invoke(cli, ["--summarize", d / "r1.json", d / "r2.json"], prog_name="ae-eval")
    assert s.exit_code == 0, s.stderr
    m = json.loads(s.stdout)["metrics"]
    assert m["gap.gap"]["values"] == pytest.approx([want, gap2], rel=1e-6)
    assert m["gap.gap"]["mean"] == pytest.approx((want + gap2) / 2, rel=1e-6)
    assert m["gap.machines"]["values"] == [2.0, 1.0]
    assert "gap.weight" not in m  # a setting: never averaged
    st = invoke(cli, ["--summarize", d / "r1.json", d / "r2.json", "--table"],
                prog_name="ae-eval")
    assert st.exit_code == 0, st.stderr
    line = next(ln for ln in st.stdout.splitlines() if ln.startswith("gap.gap "))
    assert line.split()[1:] == [f"{(want + gap2) / 2:.4g}",
                                f"{np.std([want, gap2], ddof=1):.4g}",
                                f"{min(want, gap2):.4g}", f"{max(want, gap2):.4g}", "2"]
    assert sections.report_schema().splitlines()[-1].split() == [
        "gap", "{count,", "weight,", "machines,", "gap}"]

    # ae-table --section gap: the entry's rows per machine type and key, the means
    machine = np.array(["fan", "pump"])[np.arange(N) % 2]
    per = {k: float(mse[(anomaly == 1) & (machine == k)].mean()
                    - mse[(anomaly == 0) & (machine == k)].mean()) for k in ("fan", "pump")}
    assert json.loads((d / "r1.json").read_text())["gap"]["per_machine"] == \
        pytest.approx(per, rel=1e-5)
    got_per = json.loads((d / "r1.json").read_text())["gap"]["per_machine"]
    for name in ("m1.fan.json", "m2.fan.json"):  # LABEL.TYPE.json: two models on type fan
        (d / name).write_text((d / "r1.json").read_text())
    tb = invoke(table_cli, ["--section", "gap", "--format", "csv", d / "m1.fan.json",
                            d / "m2.fan.json"], prog_name="ae-table")
    assert tb.exit_code == 0, tb.stderr
    got = [line.split(",") for line in tb.stdout.splitlines()]
    mean = (got_per["fan"] + got_per["pump"]) / 2
    assert got == [["machine type", "machine", "m1 gap", "m2 gap"],
                   ["fan", "fan", repr(got_per["fan"]), repr(got_per["fan"])],
                   ["fan", "pump", repr(got_per["pump"]), repr(got_per["pump"])],
                   ["fan", "mean", repr(mean), repr(mean)],
                   ["all types", "arithmetic mean", repr(mean), repr(mean)]]
    bad = invoke(table_cli, ["--section", "nope", d / "m1.fan.json"], prog_name="ae-table")
    assert one_error_line(bad).startswith("ae-table: error: --section: no metric section "
                                          "'nope' with table rows is registered (those with: "
                                          "gap)")


def test_new_section_checks_its_labels_before_any_forward_pass(gap_metric, monkeypatch):
    d = gap_metric
    _dataset(d)
    pd.read_csv(d / "labels.csv").drop(columns="machine").to_csv(d / "nomachine.csv",
                                                                   index=False)
    from aekit.evaluate import evaluation

    def no_pass(*a, **k):
        raise AssertionError("a forward pass ran before the labels were checked")

    monkeypatch.setattr(evaluation, "score_rows", no_pass)
    r = _eval(d, labels="nomachine.csv")
    assert one_error_line(r).endswith("error: the gap metric needs a machine column")


def test_section_not_asked_for_is_not_computed(gap_metric):
    d = gap_metric
    _dataset(d)
    r = invoke(cli, [d / "m.safetensors", d / "f.h5"], prog_name="ae-eval")
    assert r.exit_code == 0, r.stderr
    assert list(json.loads(r.stdout))[-1] == "reconstruction"  # needs an anomaly column


def test_register_refuses_a_taken_name():
    from aekit.errors import InputError

    with pytest.raises(InputError, match="'anomaly' is already registered"):
        sections.register(sections.MetricSection(name="anomaly", compute=lambda ctx: {}))
    assert [s.name for s in sections.registered()] == ["reconstruction", "anomaly", "dcase",
                                                       "probe"]


def test_option_errors_name_the_parameter_and_the_command_its_flag(tmp_path):
    from aekit.errors import InputError
    from aekit.evaluate.evaluation import EvalOptions, evaluate_file

    _dataset(tmp_path)
    with pytest.raises(InputError) as e:  # a notebook user is told the parameter
        evaluate_file(tmp_path / "m.safetensors", tmp_path / "f.h5",
                      EvalOptions(submission=True, score="mse"))
    assert str(e.value) == ("submission: needs a label file with the machine type and "
                            "section columns")
    for args, flag in ((["--submission", tmp_path / "sub"], "--submission"),
                       (["--anomaly-column", "anomaly"], "--anomaly-column"),
                       (["--probe-column", "machine", "--labels", tmp_path / "labels.csv"],
                        "--probe-column")):
        r = invoke(cli, [tmp_path / "m.safetensors", tmp_path / "f.h5", *args],
                   prog_name="ae-eval")
        assert one_error_line(r).startswith(f"ae-eval: error: {flag}: needs a ")
