"""Issue 19, item 4: ae-table, the per-type results table across several ae-eval reports,
recomputed from known report values (DCASE 2020 groups, DCASE 2021-2025 sections)."""

from __future__ import annotations

import csv
import io
import json
from statistics import harmonic_mean, mean

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from aekit.evaluate import dcase
from aekit.cmds.table import cli
from conftest import invoke, one_error_line

TYPES = ("fan", "pump")
SECTIONS = ("00", "01")


def _clips(seed: int, shift: float):
    """Per-clip labels and scores of two types x two sections x two domains: 6 normals and
    3 anomalies in each domain; anomalies score higher by ``shift`` on average."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in TYPES:
        for sec in SECTIONS:
            for dom in ("source", "target"):
                for a in (0,) * 6 + (1,) * 3:
                    rows.append((t, sec, dom, a, float(rng.normal(a * shift, 1.0))))
    t, sec, dom, y, s = (np.array(c) for c in zip(*rows))
    return t, sec, dom, y.astype(int), s.astype(float)


def _report(d: dict | None = None, anomaly: dict | None = None, arch="frames", score="mse",
            version=1) -> dict:
    rep = {"format": "aekit-eval", "format_version": version,
           "model": {"arch": arch}, "anomaly": anomaly or {"score": score}}
    if d is not None:
        rep["dcase"] = d
    return rep


def _write_dcase(tmp_path, name: str, seed: int, shift: float, protocol="dcase2023"):
    """One report per machine type (LABEL.TYPE.json) and the results over all types."""
    t, sec, dom, y, s = _clips(seed, shift)
    paths = []
    for mt in TYPES:
        m = t == mt
        d = dcase.dcase_results(t[m], sec[m], dom[m], y[m], s[m], protocol=protocol)
        p = tmp_path / f"{name}.{mt}.json"
        p.write_text(json.dumps(_report(d)))
        paths.append(p)
    return paths, dcase.dcase_results(t, sec, dom, y, s, protocol=protocol), (t, sec, dom, y, s)


def _csv(r) -> list[dict]:
    assert r.exit_code == 0, r.stderr
    return list(csv.DictReader(io.StringIO(r.stdout)))


def test_dcase2023_table_recomputed_from_the_reports(tmp_path):
    a, all_a, clips = _write_dcase(tmp_path, "frames-mse", 0, 1.5)
    b, all_b, _ = _write_dcase(tmp_path, "improved-mse", 1, 0.7)
    rows = _csv(invoke(cli, [*a, *b, "--format", "csv"]))
    assert list(rows[0]) == ["machine type", "section"] + [
        f"{lab} {c}" for lab in ("frames-mse", "improved-mse")
        for c in ("AUC (source)", "AUC (target)", "pAUC", "official score")]
    assert [(r["machine type"], r["section"]) for r in rows] == [
        ("fan", "00"), ("fan", "01"), ("fan", "mean"), ("pump", "00"), ("pump", "01"),
        ("pump", "mean"), ("all types", "arithmetic mean"), ("all types", "harmonic mean"),
        ("all types", "official score")]
    t, sec, dom, y, s = clips
    for lab, whole in (("frames-mse", all_a), ("improved-mse", all_b)):
        for r in rows[:6]:
            if r["section"] == "mean":
                want = whole["machine_types"][r["machine type"]]
                for c, title in (("auc_source", "AUC (source)"), ("auc_target", "AUC (target)"),
                                 ("pauc", "pAUC")):
                    assert float(r[f"{lab} {title}"]) == pytest.approx(
                        want["arithmetic_mean"][c], rel=1e-12)
                assert float(r[f"{lab} official score"]) == pytest.approx(
                    want["official_score"], rel=1e-12)
                continue
            want = whole["machine_types"][r["machine type"]]["sections"][r["section"]]
            # the report's values, to the last bit (CSV holds repr)
            assert float(r[f"{lab} AUC (source)"]) == want["auc_source"]
            assert float(r[f"{lab} AUC (target)"]) == want["auc_target"]
            assert float(r[f"{lab} pAUC"]) == want["pauc"]
            assert r[f"{lab} official score"] == ""
        # over all types: what aekit.evaluate.dcase computes over one report of every type
        am, hm, off = rows[6], rows[7], rows[8]
        for c, title in (("auc_source", "AUC (source)"), ("auc_target", "AUC (target)")):
            assert float(am[f"{lab} {title}"]) == pytest.approx(whole["arithmetic_mean"][c],
                                                                rel=1e-12)
            assert float(hm[f"{lab} {title}"]) == pytest.approx(whole["harmonic_mean"][c],
                                                                rel=1e-12)
        assert float(am[f"{lab} pAUC"]) == pytest.approx(whole["arithmetic_mean"]["pauc"],
                                                         rel=1e-12)
        assert float(hm[f"{lab} pAUC"]) == pytest.approx(whole["harmonic_mean"]["pauc"],
                                                         rel=1e-12)
        assert float(off[f"{lab} official score"]) == pytest.approx(whole["official_score"],
                                                                    rel=1e-12)
        assert off[f"{lab} AUC (source)"] == ""
    # and independently of aekit: one cell and the official score of frames-mse from sklearn
    m = (t == "pump") & (sec == "01") & ((dom == "target") | (y == 1))
    assert float(rows[4]["frames-mse AUC (target)"]) == pytest.approx(
        roc_auc_score(y[m], s[m]), abs=1e-12)
    vals = []
    for mt in TYPES:
        for sc in SECTIONS:
            k = (t == mt) & (sec == sc)
            vals += [roc_auc_score(y[k & ((dom == d) | (y == 1))], s[k & ((dom == d) | (y == 1))])
                     for d in ("source", "target")]
            vals.append(roc_auc_score(y[k], s[k], max_fpr=0.1))
    assert float(rows[8]["frames-mse official score"]) == pytest.approx(harmonic_mean(vals),
                                                                         rel=1e-12)


def test_markdown_labels_and_output_file(tmp_path):
    a, whole, _ = _write_dcase(tmp_path, "frames-mse", 0, 1.5)
    out = tmp_path / "t.md"
    r = invoke(cli, [f"mse={a[0]}", f"mse={a[1]}", "-o", out, "-q"])
    assert r.exit_code == 0 and r.stdout == "", r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == ("| machine type | section | mse AUC (source) | mse AUC (target) | "
                        "mse pAUC | mse official score |")
    assert lines[1] == "|---|---|---|---|---|---|"
    row = whole["machine_types"]["fan"]["sections"]["01"]
    assert lines[3] == (f"| fan | 01 | {row['auc_source']:.3f} | {row['auc_target']:.3f} | "
                        f"{row['pauc']:.3f} |  |")
    assert lines[4].startswith("| **fan** | mean | **")
    assert lines[-1] == (f"| **all types** | official score |  |  |  | "
                         f"{whole['official_score']:.3f} |")
    # no label in the file name: the report's ARCH-SCORE
    (tmp_path / "x.json").write_text(json.dumps(json.loads(a[0].read_text())))
    r = invoke(cli, [tmp_path / "x.json"])
    assert r.exit_code == 0 and "| frames-mse AUC (source) |" in r.stdout.splitlines()[0]
    # -o naming an input is refused, the input untouched
    before = a[0].read_bytes()
    r = invoke(cli, [a[0], "-o", a[0]])
    assert "same file as input" in one_error_line(r, 2) and a[0].read_bytes() == before


def test_dcase2021_columns_per_domain(tmp_path):
    a, whole, _ = _write_dcase(tmp_path, "frames", 2, 1.0, protocol="dcase2021")
    rows = _csv(invoke(cli, [*a, "--format", "csv"]))
    assert list(rows[0])[2:] == ["frames AUC (source)", "frames pAUC (source)",
                                 "frames AUC (target)", "frames pAUC (target)",
                                 "frames official score"]
    want = whole["machine_types"]["pump"]["sections"]["00"]
    assert float(rows[3]["frames pAUC (target)"]) == want["pauc_target"]
    assert float(rows[-1]["frames official score"]) == pytest.approx(whole["official_score"],
                                                                     rel=1e-12)
    assert float(rows[-3]["frames AUC (source)"]) == pytest.approx(
        mean(whole["machine_types"][t]["sections"][s]["auc_source"]
             for t in TYPES for s in SECTIONS), rel=1e-12)


def _groups(values: dict) -> dict:
    return {"score": "mse", "max_fpr": 0.1,
            "groups": {k: {"auc": a, "pauc": p} for k, (a, p) in values.items()}}


def test_dcase2020_groups_type_means_and_means_over_types(tmp_path):
    fan = {"fan_id_00": (0.9, 0.7), "fan_id_02": (0.5, 0.25), "fan_id_04": (0.7, 0.6)}
    pump = {"pump_id_00": (0.8, 0.6), "pump_id_02": (0.6, None)}
    (tmp_path / "a.fan.json").write_text(json.dumps(_report(anomaly=_groups(fan))))
    (tmp_path / "a.pump.json").write_text(json.dumps(_report(anomaly=_groups(pump))))
    rows = _csv(invoke(cli, [tmp_path / "a.fan.json", tmp_path / "a.pump.json",
                             "--format", "csv"]))
    assert list(rows[0]) == ["machine type", "id", "a AUC", "a pAUC"]
    got = [(r["machine type"], r["id"], r["a AUC"], r["a pAUC"]) for r in rows]
    assert got[:3] == [("fan", "00", "0.9", "0.7"), ("fan", "02", "0.5", "0.25"),
                       ("fan", "04", "0.7", "0.6")]
    assert got[3][:2] == ("fan", "mean")
    assert float(got[3][2]) == pytest.approx(mean([0.9, 0.5, 0.7]), rel=1e-12)
    assert float(got[3][3]) == pytest.approx(mean([0.7, 0.25, 0.6]), rel=1e-12)
    # a value ae-eval could not compute: n/a, and so is every mean over it
    assert got[4:6] == [("pump", "00", "0.8", "0.6"), ("pump", "02", "0.6", "")]
    assert got[6][:2] == ("pump", "mean") and got[6][3] == ""
    assert float(got[6][2]) == pytest.approx(0.7, rel=1e-12)
    types = [mean([0.9, 0.5, 0.7]), 0.7]
    assert got[7][:2] == ("all types", "arithmetic mean")
    assert float(got[7][2]) == pytest.approx(mean(types), rel=1e-12) and got[7][3] == ""
    assert float(got[8][2]) == pytest.approx(harmonic_mean(types), rel=1e-12)
    assert len(got) == 9  # DCASE 2020 defines no official score
    md = invoke(cli, [tmp_path / "a.fan.json", tmp_path / "a.pump.json"]).stdout.splitlines()
    assert md[0] == "| machine type | id | a AUC | a pAUC |"
    assert md[7] == "| pump | 02 | 0.600 | n/a |"
    assert md[8] == "| **pump** | mean | **0.700** | **n/a** |"
    # groups not named TYPE_id_NN: the type from the file name LABEL.TYPE.json
    (tmp_path / "b.valve.json").write_text(json.dumps(_report(anomaly=_groups(
        {"m1": (0.5, 0.5)}))))
    r = invoke(cli, [tmp_path / "b.valve.json", "--format", "csv"])
    assert _csv(r)[0]["machine type"] == "valve" and _csv(r)[0]["id"] == "m1"


def test_refusals_are_one_line(tmp_path):
    a, _, _ = _write_dcase(tmp_path, "x", 0, 1.0)
    b21, _, _ = _write_dcase(tmp_path, "y", 0, 1.0, protocol="dcase2021")
    g = tmp_path / "z.fan.json"
    g.write_text(json.dumps(_report(anomaly=_groups({"fan_id_00": (0.9, 0.7)}))))

    def err(*args):
        return one_error_line(invoke(cli, list(args)), 2)

    assert "mixed protocols" in err(a[0], g)
    assert "mixed protocols" in err(a[0], b21[0])
    assert "dcase2023" in err(a[0], b21[0]) and "dcase2021" in err(a[0], b21[0])
    # other max_fpr: another pAUC
    d = json.loads(a[1].read_text())
    d["dcase"]["max_fpr"] = 0.2
    (tmp_path / "w.pump.json").write_text(json.dumps(d))
    assert "mixed protocols" in err(a[0], tmp_path / "w.pump.json")
    # labels that cover different rows: refused, never averaged over different sets
    msg = err(*a, f"v={a[0]}")
    assert msg.endswith("every model must cover the same machine types and sections")
    assert "v lacks pump 00, pump 01" in msg
    # one model given one type twice
    assert "both give x on fan" in err(a[0], f"x={a[0]}")
    # unknown format version, not a report, no per-machine numbers
    d = json.loads(a[0].read_text())
    d["format_version"] = 2
    (tmp_path / "v2.fan.json").write_text(json.dumps(d))
    assert "format_version 2 is not known" in err(tmp_path / "v2.fan.json")
    (tmp_path / "n.json").write_text("[1, 2]")
    assert "not an ae-eval report" in err(tmp_path / "n.json")
    (tmp_path / "e.fan.json").write_text(json.dumps(_report()))
    assert "no per-machine numbers" in err(tmp_path / "e.fan.json")
    assert "no such file" in err(tmp_path / "missing.json")
    # a metric outside [0, 1] (a damaged report) and a label that would break the table
    d = json.loads(a[0].read_text())
    d["dcase"]["machine_types"]["fan"]["sections"]["00"]["pauc"] = 1.5
    (tmp_path / "bad.fan.json").write_text(json.dumps(d))
    assert "not a metric in [0, 1]" in err(tmp_path / "bad.fan.json")
    assert "a label must be" in err(f"a|b={a[0]}")
    assert "needs a path" in err("name=")
    assert "empty path" in err("")


def test_the_command_contract(tmp_path, monkeypatch):
    """The checks tests/test_contract.py applies to every ae-* command, on ae-table."""
    import test_contract

    monkeypatch.setitem(test_contract.COMMANDS, "ae-table", ("table", ["missing.json"]))
    test_contract.test_help("ae-table")
    test_contract.test_import_is_light("ae-table")
    test_contract.test_missing_input_is_a_one_line_usage_error("ae-table", tmp_path, monkeypatch)
    test_contract.test_unknown_option_is_usage_error("ae-table")
    test_contract.test_installed_executable("ae-table", tmp_path)
