"""Issue 19, item 2: the official DCASE pAUC per id/section, and the DCASE 2021-2025 results
(AUC source/target, pAUC, P/R/F1 per domain, means, official score), recomputed independently
with scikit-learn from the per-clip scores."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import hmean
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from aekit.evaluate import dcase
from aekit.evaluate import metrics
from aekit.errors import InputError

EPS = sys.float_info.epsilon


def test_group_pauc_is_the_official_mcclish_one():
    # one normal scores above every anomaly: the raw area over FPR [0, 0.1] is 0, the
    # McClish-standardized one (roc_auc_score(max_fpr=0.1)) is 0.5 * (1 - 0.005 / 0.095)
    y = np.array([0, 0, 0, 0, 1, 1] * 2)
    s = np.array([0.95, 0.2, 0.3, 0.4, 0.8, 0.9] * 2)
    g = np.array(["id_00"] * 6 + ["id_02"] * 6)
    rep = metrics.anomaly_report(y, s, g)
    official = 0.5 * (1 - 0.005 / 0.095)
    assert roc_auc_score(y[:6], s[:6], max_fpr=0.1) == pytest.approx(official)
    assert rep["pauc"] == pytest.approx(official)
    for name in ("id_00", "id_02"):
        assert rep["groups"][name]["pauc"] == pytest.approx(official)
        assert rep["groups"][name]["pauc_raw"] == 0.0
    assert rep["group_mean"]["pauc_arithmetic"] == pytest.approx(official)
    assert rep["group_mean"]["pauc_harmonic"] == pytest.approx(official)
    assert rep["pauc_raw"] == 0.0 and "pauc_mcclish" not in rep


def _hand_section():
    """One section: source normals low, target normals high, anomalies in between."""
    rows = [  # domain, anomaly, score
        ("source", 0, 0.1), ("source", 0, 0.2), ("source", 1, 0.5),
        ("target", 0, 0.55), ("target", 0, 0.9), ("target", 1, 0.6)]
    dom, y, s = zip(*rows)
    return ["fan"] * 6, ["00"] * 6, list(dom), np.array(y), np.array(s)


def test_hand_built_2023_source_and_target_differ():
    t, sec, dom, y, s = _hand_section()
    r = dcase.dcase_results(t, sec, dom, y, s, protocol="dcase2023")
    row = r["machine_types"]["fan"]["sections"]["00"]
    # source AUC: normals 0.1, 0.2 against ALL anomalies 0.5, 0.6 -> 1
    assert row["auc_source"] == 1.0
    # target AUC: normals 0.55, 0.9 against all anomalies 0.5, 0.6 -> 1 pair of 4
    assert row["auc_target"] == 0.25
    # pAUC on every clip: a normal is on top (FPR 0.25 before any TPR): McClish of area 0
    p = 0.5 * (1 - 0.005 / 0.095)
    assert row["pauc"] == pytest.approx(p)
    assert r["official_score"] == pytest.approx(3 / (1 / 1.0 + 1 / 0.25 + 1 / p))
    assert r["official_score"] == pytest.approx(27 / 64)
    assert r["arithmetic_mean"]["auc"] == pytest.approx(0.625)
    assert r["arithmetic_mean"]["auc_source"] == 1.0
    assert r["arithmetic_mean"]["auc_target"] == 0.25
    # 2021: each domain its own normals and its own anomalies
    r21 = dcase.dcase_results(t, sec, dom, y, s, protocol="dcase2021")
    row = r21["machine_types"]["fan"]["sections"]["00"]
    assert row["auc_source"] == 1.0 and row["pauc_source"] == 1.0
    assert row["auc_target"] == 0.5 and row["pauc_target"] == pytest.approx(p)
    assert r21["official_score"] == pytest.approx(4 / (1 + 1 + 2 + 1 / p))


def _official_by_sklearn(df: pd.DataFrame, protocol: str) -> dict:
    """An independent recomputation: pandas groupby + scikit-learn + scipy.stats.hmean."""
    out, auc_all, pauc_all, prf = {}, [], [], {k: [] for k in ("precision", "recall", "f1")}
    src, tgt = [], []
    for (mt, sc), g in df.groupby(["machine_type", "section"], sort=True):
        row = {}
        for dm in ("source", "target"):
            if protocol == "dcase2021":
                sel = g[g.domain == dm]
                row[f"auc_{dm}"] = roc_auc_score(sel.anomaly, sel.score)
                row[f"pauc_{dm}"] = roc_auc_score(sel.anomaly, sel.score, max_fpr=0.1)
                auc_all.append(row[f"auc_{dm}"])
                pauc_all.append(row[f"pauc_{dm}"])
            else:
                sel = g[(g.domain == dm) | (g.anomaly == 1)]
                row[f"auc_{dm}"] = roc_auc_score(sel.anomaly, sel.score)
                (src if dm == "source" else tgt).append(row[f"auc_{dm}"])
            dd = g[g.domain == dm]
            for k, fn in (("precision", precision_score), ("recall", recall_score),
                          ("f1", f1_score)):
                row[f"{k}_{dm}"] = fn(dd.anomaly, dd.decision, zero_division=0)
        if protocol != "dcase2021":
            row["pauc"] = roc_auc_score(g.anomaly, g.score, max_fpr=0.1)
            pauc_all.append(row["pauc"])
        out[(mt, sc)] = row
    for k in prf:
        prf[k] = [r[f"{k}_source"] for r in out.values()] + \
                 [r[f"{k}_target"] for r in out.values()]
    if protocol == "dcase2021":
        official = hmean(np.maximum(auc_all + pauc_all, EPS))
        amean_auc = np.mean(auc_all)
    else:
        official = hmean(np.maximum(src + tgt + pauc_all, EPS))
        amean_auc = np.mean(src + tgt)
    return {"sections": out, "official": official, "amean_auc": amean_auc,
            "amean_pauc": np.mean(pauc_all), "prf": prf}


@pytest.mark.parametrize("protocol", ["dcase2021", "dcase2023"])
def test_every_number_matches_sklearn(protocol):
    rng = np.random.default_rng(7)
    rows = []
    for mt, shift in (("bearing", 1.5), ("fan", 0.3), ("valve", -0.2)):
        for sc in ("00", "01"):
            for dm, n_norm, n_anom, dshift in (("source", 40, 12, 0.0), ("target", 15, 9, 0.7)):
                for a, n in ((0, n_norm), (1, n_anom)):
                    sco = rng.normal(size=n) + a * shift + dshift
                    rows += [(mt, sc, dm, a, float(v)) for v in np.round(sco, 1)]  # ties
    df = pd.DataFrame(rows, columns=["machine_type", "section", "domain", "anomaly", "score"])
    df["decision"] = (df.score > 0.6).astype(int)
    df = df.sample(frac=1, random_state=3).reset_index(drop=True)  # order must not matter
    r = dcase.dcase_results(df.machine_type, df.section, df.domain, df.anomaly.to_numpy(),
                            df.score.to_numpy(), df.decision.to_numpy(), protocol=protocol)
    ref = _official_by_sklearn(df, protocol)
    assert r["count"] == len(df) and r["anomalous"] == int(df.anomaly.sum())
    assert sorted(r["machine_types"]) == ["bearing", "fan", "valve"]
    n = 0
    for (mt, sc), want in ref["sections"].items():
        got = r["machine_types"][mt]["sections"][sc]
        assert set(got) - {"count"} == set(want)
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12), (mt, sc, k)
            n += 1
    assert n == 6 * (10 if protocol == "dcase2021" else 9)
    for mt in ("bearing", "fan", "valve"):
        t = r["machine_types"][mt]
        secs = [ref["sections"][(mt, sc)] for sc in ("00", "01")]
        for k in secs[0]:
            vals = [s[k] for s in secs]
            assert t["arithmetic_mean"][k] == pytest.approx(np.mean(vals), abs=1e-12)
            assert t["harmonic_mean"][k] == pytest.approx(hmean(np.maximum(vals, EPS)), rel=1e-12)
        aucs = [s[f"auc_{dm}"] for dm in ("source", "target") for s in secs]
        paucs = ([s[f"pauc_{dm}"] for dm in ("source", "target") for s in secs]
                 if protocol == "dcase2021" else [s["pauc"] for s in secs])
        assert t["arithmetic_mean"]["auc"] == pytest.approx(np.mean(aucs), abs=1e-12)
        assert t["harmonic_mean"]["auc"] == pytest.approx(hmean(aucs), rel=1e-12)
        assert t["official_score"] == pytest.approx(hmean(aucs + paucs), rel=1e-12)
    assert r["official_score"] == pytest.approx(ref["official"], rel=1e-12)
    assert r["arithmetic_mean"]["auc"] == pytest.approx(ref["amean_auc"], abs=1e-12)
    assert r["arithmetic_mean"]["pauc"] == pytest.approx(ref["amean_pauc"], abs=1e-12)
    for k, v in ref["prf"].items():
        assert r["arithmetic_mean"][k] == pytest.approx(np.mean(v), abs=1e-12)
        assert r["harmonic_mean"][k] == pytest.approx(hmean(np.maximum(v, EPS)), rel=1e-9)
    # the source and target AUCs really differ in this data (the domain rule matters)
    fan = r["machine_types"]["fan"]["arithmetic_mean"]
    assert abs(fan["auc_source"] - fan["auc_target"]) > 0.1


def test_refusals():
    t, sec, dom, y, s = _hand_section()
    with pytest.raises(InputError, match="domain must be 'source' or 'target'"):
        dcase.dcase_results(t, sec, dom[:-1] + [""], y, s)
    with pytest.raises(InputError, match="unknown protocol"):
        dcase.dcase_results(t, sec, dom, y, s, protocol="dcase2019")
    with pytest.raises(InputError, match="NaN"):
        dcase.dcase_results(t, sec, dom, y, np.r_[s[:-1], np.nan])
    y2 = y.copy()
    y2[5] = 0  # no target anomaly: fine for 2023 (all anomalies enter), not for 2021
    dcase.dcase_results(t, sec, dom, y2, s, protocol="dcase2023")
    with pytest.raises(InputError, match="fan section 00 target: only normal"):
        dcase.dcase_results(t, sec, dom, y2, s, protocol="dcase2021")


def test_ae_eval_protocol_report(tmp_path):
    from test_eval import N, PARAMS, SHAPE, make_dataset, one_error_line, run

    from aekit.models.modelfile import Normalizer, save_model
    from aekit.models.mlp import AEConfig
    from aekit.models.registry import build_model

    x, ids, anomaly = make_dataset(tmp_path)
    torch.manual_seed(0)
    model = build_model(AEConfig(input_shape=SHAPE, hidden=(32, 16), latent=8)).eval()
    save_model(tmp_path / "t.safetensors", model, Normalizer("global", dim=x[0].size).fit([x]),
               PARAMS, threshold={"method": "empirical", "value": 17.0, "quantile": 0.9, "n": 9})
    i = np.arange(N)
    # a few quiet clips labelled anomalous too, so that no number is trivially 1
    pd.DataFrame({"id": ids, "anomaly": anomaly | (i % 7 == 3), "machine_type": "fan",
                  "section": np.where(i < N // 2, "00", "01"),
                  "domain": np.where(i % 3 == 0, "source", "target")}).to_csv(
        tmp_path / "dl.csv", index=False)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "dl.csv",
            "--anomaly-column", "anomaly", "--protocol", "dcase2023", "--scores",
            tmp_path / "s.csv", "-o", tmp_path / "r.json", "--submission", tmp_path / "sub",
            "--result-csv", tmp_path / "result.csv")
    assert r.exit_code == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    df = pd.read_csv(tmp_path / "s.csv", dtype={"section": str})
    df["score"], df["decision"] = df.mse, (df.mse > 17.0).astype(int)
    ref = _official_by_sklearn(df, "dcase2023")
    d = rep["dcase"]
    assert d["protocol"] == "dcase2023" and d["score"] == "mse"
    for (mt, sc), want in ref["sections"].items():
        for k, v in want.items():
            assert d["machine_types"][mt]["sections"][sc][k] == pytest.approx(v, abs=1e-6)
    assert d["official_score"] == pytest.approx(ref["official"], rel=1e-6)
    per = rep["anomaly"]["threshold"]["per_domain"]
    for dm in ("source", "target"):
        g = df[df.domain == dm]
        assert per[dm]["tp"] == int(((g.decision == 1) & (g.anomaly == 1)).sum())
        assert per[dm]["f1"] == pytest.approx(f1_score(g.anomaly, g.decision, zero_division=0))
    # submission files: one pair per type and section, no header, file name then value
    want = sorted(f"{k}_fan_section_{sc}_test.csv" for k in ("anomaly_score", "decision_result")
                  for sc in ("00", "01"))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == want
    assert rep["submission"]["files"] == want
    df["name"] = [f"{i}.wav" for i in df.id]  # the clips' source file names (make_dataset)
    for sc in ("00", "01"):
        g = df[df.section == sc].sort_values("name")
        lines = (tmp_path / "sub" / f"anomaly_score_fan_section_{sc}_test.csv").read_text()
        rows = [ln.split(",") for ln in lines.splitlines()]
        assert [r_[0] for r_ in rows] == g.name.tolist()
        np.testing.assert_allclose([float(r_[1]) for r_ in rows], g.mse, rtol=1e-5)
        lines = (tmp_path / "sub" / f"decision_result_fan_section_{sc}_test.csv").read_text()
        assert lines == "".join(f"{n},{v}\n" for n, v in zip(g.name, g.decision))
    # the evaluation set's labels: no anomaly, no domain; type and section are enough
    lab = pd.read_csv(tmp_path / "dl.csv", dtype=str)[["id", "machine_type", "section"]]
    lab.to_csv(tmp_path / "eval.csv", index=False)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "eval.csv",
            "--submission", tmp_path / "sub3", "-o", tmp_path / "r3.json")
    assert r.exit_code == 0, r.stderr
    for name in want:
        assert (tmp_path / "sub3" / name).read_bytes() == (tmp_path / "sub" / name).read_bytes()
    # a machine type that cannot be a file name: refused before any pass, nothing written
    lab.loc[0, "machine_type"] = "../fan"
    lab.to_csv(tmp_path / "bad.csv", index=False)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "bad.csv",
            "--submission", tmp_path / "sub4")
    assert r.exit_code == 2 and "cannot be part of a submission file name" in one_error_line(r)
    assert not (tmp_path / "sub4").exists()
    # no stored threshold: no decisions, --submission refused before any pass
    r = run(tmp_path / "m.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "dl.csv",
            "--anomaly-column", "anomaly", "--protocol", "dcase2023", "--submission",
            tmp_path / "sub2")
    assert r.exit_code == 2 and "stores no threshold" in one_error_line(r)
    assert not (tmp_path / "sub2").exists()
    # ae-table (was examples/dcase/table.py): the 2021-2025 table from such reports
    import shutil

    from aekit.cmds.table import cli as table_cli
    from conftest import invoke

    shutil.copy(tmp_path / "r.json", tmp_path / "frames.fan.json")
    p = invoke(table_cli, [tmp_path / "frames.fan.json"])
    assert p.exit_code == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == ("| machine type | section | frames AUC (source) | frames AUC (target) "
                        "| frames pAUC | frames official score |")
    row = d["machine_types"]["fan"]["sections"]["01"]
    assert lines[3] == (f"| fan | 01 | {row['auc_source']:.3f} | {row['auc_target']:.3f} | "
                        f"{row['pauc']:.3f} |  |")
    assert lines[-1] == f"| **all types** | official score |  |  |  | {d['official_score']:.3f} |"
    # the result table
    res = pd.read_csv(tmp_path / "result.csv", dtype={"section": str})
    assert list(res.columns) == ["machine type", "section", "AUC (source)", "AUC (target)",
                                 "pAUC", "precision (source)", "precision (target)",
                                 "recall (source)", "recall (target)", "F1 score (source)",
                                 "F1 score (target)", "official score"]
    assert res["section"].tolist() == ["00", "01", "arithmetic mean", "harmonic mean",
                                       "official score", "arithmetic mean", "harmonic mean",
                                       "official score"]
    assert res["machine type"].tolist() == ["fan"] * 5 + ["all"] * 3
    want01 = ref["sections"][("fan", "01")]
    assert res.loc[1, "AUC (target)"] == pytest.approx(want01["auc_target"], abs=1e-6)
    assert res.loc[1, "F1 score (source)"] == pytest.approx(want01["f1_source"], abs=1e-6)
    assert res.loc[7, "official score"] == pytest.approx(ref["official"], abs=1e-6)
    assert res.loc[5, "pAUC"] == pytest.approx(
        np.mean([ref["sections"][("fan", sc)]["pauc"] for sc in ("00", "01")]), abs=1e-6)
    # the summary averages the dcase section too
    s = run("--summarize", tmp_path / "r.json", tmp_path / "r.json", "--table")
    assert s.exit_code == 0
    assert "dcase.official_score" in s.stdout
    assert "dcase.machine_types.fan.sections.00.auc_source" in s.stdout
    # 2021 needs anomalies in each domain: refused in one line, exit 2, before any pass
    lab = pd.read_csv(tmp_path / "dl.csv", dtype=str)
    lab.loc[(lab.section == "01") & (lab.domain == "source"), "anomaly"] = "0"
    lab.to_csv(tmp_path / "dl2.csv", index=False)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "dl2.csv",
            "--anomaly-column", "anomaly", "--protocol", "dcase2021")
    assert r.exit_code == 2
    assert "fan section 01 source: only normal clips" in one_error_line(r)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--labels", tmp_path / "dl.csv",
            "--protocol", "dcase2023")
    assert r.exit_code == 2 and "--protocol: needs an anomaly column" in one_error_line(r)
    r = run(tmp_path / "t.safetensors", tmp_path / "f.h5", "--result-csv", tmp_path / "x.csv")
    assert r.exit_code == 2 and "--result-csv needs --protocol" in one_error_line(r)
