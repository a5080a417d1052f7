"""Issue 20, part 1: --score auto, the default of ae-eval, ae-score and the Python API: the
score the model kind declares (ArchInfo.score: frames, interp mahalanobis; whole-clip mse),
used when the model stores its Mahalanobis statistics, else mse; --threshold model, ae-eval's
decisions and --submission at the threshold of the score in use."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import cli_of as cmd, invoke, read_csv as rows

TINY = ["--hidden", "16,8", "--latent", "4", "--epochs", "2", "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tones, tone_frames_model):
    """The session's tones and their features (conftest.tones), labels (anomaly: every third
    clip; one type, one section), the frames model (conftest.tone_frames_model) and a baseline
    model trained on all clips."""
    root = tmp_path_factory.mktemp("auto")
    feats, ids, x = tones["feats"], tones["ids"], tones["x"].copy()
    labels = root / "labels.csv"
    labels.write_text("id,anomaly,machine_type,section\n" + "".join(
        f"{i},{int(k % 3 == 0)},fan,00\n" for k, i in enumerate(ids)))
    models = {"frames": tone_frames_model, "baseline": root / "baseline.safetensors"}
    r = invoke(cmd("train"), [feats, "-o", models["baseline"], "--arch", "baseline", *TINY])
    assert r.exit_code == 0, r.stderr
    return {"root": root, "audio": tones["audio"], "feats": feats, "ids": ids, "x": x,
            "labels": labels, **models}


def maha_threshold(lm) -> float:
    from aekit.evaluate.thresholds import fit_threshold

    return fit_threshold(lm.info["training_scores"]["scorers"]["mahalanobis"]["values"])["value"]


def test_kinds_declare_their_score():
    from aekit.models import registry as models

    ARCHS = models.kinds()
    assert {a: ARCHS[a].score for a in ("baseline", "improved", "frames", "interp")} == {
        "baseline": "mse", "improved": "mse", "frames": "mahalanobis", "interp": "mahalanobis"}
    with pytest.raises(ValueError, match="score must be"):
        models.register("x_bad_score", object, lambda c: None, score="mae")
    assert "x_bad_score" not in ARCHS


def test_auto_resolves_per_model_and_per_ensemble(setup):
    from aekit.evaluate.autoscore import resolve
    from aekit.models.modelfile import load_model

    fr, bl = load_model(setup["frames"]), load_model(setup["baseline"])
    assert bl.mahalanobis  # a whole-clip model may store statistics: auto is still its mse
    assert resolve(fr)[0] == "mahalanobis" and resolve(bl)[0] == "mse"
    assert resolve(fr, "mse") == ("mse", "given") and resolve(bl, "mahalanobis")[0] == \
        "mahalanobis"
    old = load_model(setup["frames"])
    old.mahalanobis = None  # as a model written before ae-train stored statistics
    name, why = resolve(old)
    assert name == "mse" and "stores no Mahalanobis statistics" in why
    ens = lambda *m: SimpleNamespace(is_ensemble=True, members=list(m),  # noqa: E731
                                     names=[f"m{k}" for k in range(len(m))])
    assert resolve(ens(fr, fr))[0] == "mahalanobis"
    assert resolve(ens(fr, bl))[0] == "mse" and resolve(ens(fr, old))[0] == "mse"


def test_ae_score_auto_scorer_column_log_and_model_threshold(setup):
    import aekit
    from aekit.models.modelfile import load_model

    lm = load_model(setup["frames"])
    r = invoke(cmd("score"), [setup["frames"], setup["audio"], "-j", "1", "--batch-size", "5",
                              "--threshold", "model"])
    assert r.exit_code == 0, r.stderr
    assert "score: mahalanobis (auto: model kind frames prefers mahalanobis" in r.stderr
    out = rows(r.stdout)
    assert list(out[0]) == ["id", "path", "score", "decision", "scorer"]
    assert [o["id"] for o in out] == setup["ids"] and {o["scorer"] for o in out} == \
        {"mahalanobis"}
    want = aekit.score_features(lm, setup["x"], score="mahalanobis")
    np.testing.assert_allclose([float(o["score"]) for o in out], want, rtol=1e-5)
    t = maha_threshold(lm)
    assert aekit.model_threshold(lm) == pytest.approx(t, rel=1e-12)
    assert [o["decision"] for o in out] == [str(int(s > t)) for s in want]
    # the threshold comes from out-of-sample distances (tests/test_crossfit20.py): above the
    # 90th percentile of these clips' own in-sample distances, where an in-sample fit put it
    assert t > np.quantile(want, 0.9)
    # explicit --score mse: the MSE and the threshold ae-train stored, as before
    r = invoke(cmd("score"), [setup["frames"], setup["audio"], "-j", "1", "--score", "mse",
                              "--threshold", "model"])
    assert r.exit_code == 0, r.stderr
    out = rows(r.stdout)
    mse = aekit.score_features(lm, setup["x"], score="mse")
    np.testing.assert_allclose([float(o["score"]) for o in out], mse, rtol=1e-5)
    tm = lm.info["threshold"]["value"]
    assert [o["decision"] for o in out] == [str(int(s > tm)) for s in mse]
    assert {o["scorer"] for o in out} == {"mse"} and "--score auto" not in r.stderr
    # a whole-clip model: auto is mse
    r = invoke(cmd("score"), [setup["baseline"], setup["audio"], "-j", "1"])
    assert r.exit_code == 0 and "score: mse (auto: model kind baseline prefers mse)" \
        in r.stderr
    assert {o["scorer"] for o in rows(r.stdout)} == {"mse"}


def test_python_api_default_is_auto(setup):
    import aekit
    from aekit.models.modelfile import load_model

    lm = load_model(setup["frames"])
    maha = aekit.score_features(lm, setup["x"], score="mahalanobis")
    assert aekit.resolve_score(lm) == "mahalanobis"
    np.testing.assert_array_equal(aekit.score_features(lm, setup["x"]), maha)
    paths = [setup["audio"] / f"{i}.wav" for i in setup["ids"][:3]]
    got = [r.score for r in aekit.score_files(lm, paths, jobs=1)]
    np.testing.assert_allclose(got, maha[:3], rtol=1e-5)
    import soundfile as sf

    w, sr = sf.read(paths[0], dtype="float32")
    np.testing.assert_allclose(aekit.score_array(lm, w, sr), maha[:1], rtol=1e-5)
    np.testing.assert_allclose(aekit.score_array(lm, w, sr, score="mse"),
                               aekit.score_features(lm, setup["x"][:1], score="mse"), rtol=1e-5)


def test_ae_eval_decisions_and_submission_use_the_score_threshold(setup):
    from aekit.models.modelfile import load_model

    root, lm = setup["root"], load_model(setup["frames"])
    common = [setup["feats"], "--labels", setup["labels"], "--anomaly-column", "anomaly", "-q"]
    r = invoke(cmd("eval"), [setup["frames"], *common, "--scores", root / "s.csv",
                             "--submission", root / "sub", "-o", root / "r.json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads((root / "r.json").read_text())
    assert rep["anomaly"]["score"] == "mahalanobis" and rep["submission"]["score"] == \
        "mahalanobis"
    t = maha_threshold(lm)
    th = rep["anomaly"]["threshold"]
    assert th["value"] == pytest.approx(t, rel=1e-12)
    sc = rows((root / "s.csv").read_text())
    s = np.array([float(o["mahalanobis"]) for o in sc])
    y = np.array([int(o["anomaly"]) for o in sc])
    d = s > t
    assert (th["tp"], th["fp"], th["fn"], th["tn"]) == (
        int((d & (y == 1)).sum()), int((d & (y == 0)).sum()), int((~d & (y == 1)).sum()),
        int((~d & (y == 0)).sum()))
    dec = (root / "sub" / "decision_result_fan_section_00_test.csv").read_text().split()
    assert dec == [f"{i}.wav,{int(v)}" for i, v in zip(setup["ids"], d)]
    # explicit --score mse: the stored MSE threshold, as before
    r = invoke(cmd("eval"), [setup["frames"], *common, "--score", "mse", "-o", root / "m.json"])
    assert r.exit_code == 0, r.stderr
    rep = json.loads((root / "m.json").read_text())
    assert rep["anomaly"]["score"] == "mse"
    assert rep["anomaly"]["threshold"]["value"] == lm.info["threshold"]["value"]
    # a whole-clip model at the default: mse
    r = invoke(cmd("eval"), [setup["baseline"], *common, "-o", root / "b.json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads((root / "b.json").read_text())["anomaly"]["score"] == "mse"


def test_no_stored_training_distances_no_mahalanobis_threshold(setup):
    from aekit.evaluate.autoscore import threshold
    from aekit.errors import InputError
    from aekit.evaluate.evaluation import EvalOptions, evaluate
    from aekit.models.modelfile import load_model
    from aekit.data.store import FeatureFile

    lm = load_model(setup["frames"])
    lm.info = {k: v for k, v in lm.info.items() if k != "training_scores"}
    with pytest.raises(InputError, match="stores no per-clip Mahalanobis training scores"):
        threshold(lm, "mahalanobis")
    assert threshold(lm, "mse")["value"] == lm.info["threshold"]["value"]
    with FeatureFile(setup["feats"]) as ff:
        rows_ = np.arange(len(ff))
        names = np.full(rows_.size, "all", dtype=object)
        opts = EvalOptions(labels_path=str(setup["labels"]), anomaly_column="anomaly")
        report, _ = evaluate(lm, ff, rows_, names, opts)
        assert report["anomaly"]["score"] == "mahalanobis" and "threshold" not in \
            report["anomaly"]
        with pytest.raises(InputError, match="no Mahalanobis threshold"):
            evaluate(lm, ff, rows_, names, EvalOptions(labels_path=str(setup["labels"]),
                                                       submission=True,
                                                       type_column="machine_type"))

