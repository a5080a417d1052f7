"""ae-score and the public API (aekit.evaluate.scoring): audio files -> per-clip scores, streaming.

The oracle for every score is the two-step path: ae-featurize + ae-eval --scores on the
same files and model (ae-eval writes %.6g, ae-score %.9g: they agree to rel 1e-5).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import exe, invoke, read_csv, write_tone

MEL = ["--num-samples", "2304", "--n-mels", "4"]  # clips 2 x 4 x 10 (conftest.SHAPE)
TINY = ["--hidden", "16,8", "--latent", "4", "--epochs", "2", "--batch-size", "4", "-q"]
N_GOOD = 11  # two tasks of the featurize workers (8 files each)
RTOL = 1e-5  # ae-eval's %.6g rounding (5e-6 relative) plus float32 rounding of the forward pass


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """11 short tones (mono and stereo, 16 and 22.05 kHz) and one undecodable file, in 'a/'."""
    root = tmp_path_factory.mktemp("score") / "a"
    for i in range(N_GOOD):
        write_tone(root / f"m{i:02d}.wav", sr=16000 if i % 3 else 22050, seconds=0.2,
                   channels=1 + i % 2, freq=300 + 40 * i, seed=i)
    (root / "m05x.wav").write_bytes(b"not audio")  # sorts between m05 and m06
    return root


@pytest.fixture(scope="module")
def features(audio) -> Path:
    out = audio.parent / "f.h5"
    r = invoke("featurize", [audio, "-o", out, "-j", "1", "--max-fail-frac", "0.2", "-q", *MEL])
    assert r.exit_code == 0, r.stderr
    return out


_MODELS: dict = {}


def trained(features: Path, arch: str) -> Path:
    if arch not in _MODELS:
        out = features.parent / f"{arch}.safetensors"
        r = invoke("train", [features, "-o", out, "--arch", arch, *TINY])
        assert r.exit_code == 0, r.stderr
        _MODELS[arch] = out
    return _MODELS[arch]


def eval_scores(model: Path, features: Path, column: str = "mse") -> dict[str, float]:
    out = features.parent / f"{model.stem}.scores.csv"
    r = invoke("eval", [model, features, "--scores", out, "-o", features.parent / "r.json", "-q"])
    assert r.exit_code == 0, r.stderr
    return {row["id"]: float(row[column]) for row in read_csv(out.read_text())}


def _archs():
    from aekit.models.registry import kinds

    return sorted(kinds())


@pytest.mark.parametrize("arch", _archs())
def test_scores_equal_featurize_plus_eval(audio, features, arch):
    from aekit.models.registry import kind

    model = trained(features, arch)
    # both at the default --score auto: the kind's declared score (its statistics are stored)
    scorer = kind(arch).score
    want = eval_scores(model, features, scorer)
    r = invoke("score", [model, audio, "-j", "2", "--batch-size", "4", "--max-fail-frac", "0.2"])
    assert r.exit_code == 0, r.stderr
    rows = read_csv(r.stdout)
    assert list(rows[0]) == ["id", "path", "score", "scorer"]
    assert {row["scorer"] for row in rows} == {scorer}
    ids = [row["id"] for row in rows]
    assert ids == sorted(ids) and len(ids) == N_GOOD + 1  # input order, the failure included
    bad = [row for row in rows if row["id"] == "m05x"]
    assert bad[0]["score"] == "" and "m05x.wav: " in r.stderr and "empty score" in r.stderr
    got = {row["id"]: float(row["score"]) for row in rows if row["score"]}
    assert set(got) == set(want)
    np.testing.assert_allclose([got[k] for k in sorted(want)], [want[k] for k in sorted(want)],
                               rtol=RTOL)


def test_library_scores_match_score_rows_tightly(audio, features):
    """score_files (batches of 3, two workers) vs inference.score_rows on the HDF5 rows
    (batches of 256): the same features, the same model; float32 forward passes agree to 1e-6."""
    import aekit
    from aekit.evaluate.inference import score_rows

    model = aekit.load_model(trained(features, "baseline"))
    paths = sorted(audio.iterdir())
    recs = list(aekit.score_files(model, paths, jobs=2, batch_size=3))
    assert [r.index for r in recs] == list(range(len(paths)))
    assert [r.path for r in recs] == [str(p) for p in paths]
    with aekit.open_features(features) as ff:
        ref = score_rows(model, ff)
        by_path = dict(zip(ff.paths, ref.mse))
    ok = [r for r in recs if r.error is None]
    assert len(ok) == N_GOOD
    np.testing.assert_allclose([r.score for r in ok], [by_path[r.path] for r in ok], rtol=1e-6)
    assert [r.error is not None for r in recs] == [p.name == "m05x.wav" for p in paths]


def test_score_array_equals_file_score(audio, features):
    import soundfile as sf

    import aekit

    model = aekit.load_model(trained(features, "baseline"))
    path = audio / "m03.wav"  # mono, 22.05 kHz: resampled and repeated to two channels
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [n, ch]
    want = next(iter(aekit.score_files(model, [path], jobs=1))).score
    got = aekit.score_array(model, data.T, sample_rate=sr)
    assert got.shape == (1,)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)


def test_threshold_stored_by_train(features):
    """The stored threshold is fitted to the kept weights' training scores, as ae-eval gives them
    (no splits: every row trains): its n and empirical 90th percentile are checked against them."""
    from scipy import stats

    import aekit

    model = trained(features, "baseline")
    t = aekit.load_model(model).info["threshold"]
    scores = np.array(list(eval_scores(model, features).values()))
    assert t["n"] == scores.size == N_GOOD and t["quantile"] == 0.9
    np.testing.assert_allclose(t["empirical"], np.quantile(scores, 0.9), rtol=RTOL)
    g = t["gamma"]
    np.testing.assert_allclose(g["value"], stats.gamma.ppf(0.9, g["shape"], g["loc"], g["scale"]))
    assert t["method"] in ("gamma", "empirical")
    assert t["value"] == (g["value"] if t["method"] == "gamma" else t["empirical"])


def test_fit_threshold_recovers_a_gamma_quantile():
    from scipy import stats

    from aekit.evaluate.thresholds import fit_threshold

    rng = np.random.default_rng(0)
    s = stats.gamma.rvs(3.0, loc=50.0, scale=10.0, size=4000, random_state=rng)
    t = fit_threshold(s)
    truth = stats.gamma.ppf(0.9, 3.0, loc=50.0, scale=10.0)
    assert t["method"] == "gamma" and abs(t["value"] - truth) / truth < 0.02
    assert t["empirical"] == pytest.approx(np.percentile(s, 90), rel=1e-12)
    flat = fit_threshold([7.0] * 5)  # no spread: no fit, the empirical quantile
    assert flat["method"] == "empirical" and flat["value"] == 7.0 and flat["gamma"] is None


def test_threshold_decisions(audio, features, tmp_path):
    model = trained(features, "baseline")
    out = tmp_path / "s.csv"
    r = invoke("score", [model, audio, "--threshold", "model", "-o", out, "--max-fail-frac", "0.2"])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    import aekit

    t = aekit.load_model(model).info["threshold"]["value"]
    rows = read_csv(out.read_text())
    assert list(rows[0]) == ["id", "path", "score", "decision", "scorer"]
    for row in rows:
        want = "" if not row["score"] else str(int(float(row["score"]) > t))
        assert row["decision"] == want
    scores = sorted(float(row["score"]) for row in rows if row["score"])
    mid = (scores[4] + scores[5]) / 2  # a number threshold: exactly 6 of 11 above it
    r = invoke("score", [model, audio, "--threshold", mid, "--max-fail-frac", "0.2", "-q"])
    assert sum(row["decision"] == "1" for row in read_csv(r.stdout)) == N_GOOD - 5


def _model_without(features: Path, out: Path, **drop) -> Path:
    """A valid model file whose metadata lacks the threshold (as before it was stored),
    and, with feature_params=True, lacks the feature parameters too."""
    import aekit
    from aekit.models.modelfile import save_model

    m = aekit.load_model(trained(features, "baseline"))
    keep = {k: v for k, v in m.info.items() if k not in
            ("threshold", "tensors_sha256", "format", "format_version", "config",
             "feature_params", "normalize", "history", "versions")}
    save_model(out, m.model, m.normalizer, {} if drop.get("feature_params") else m.feature_params,
               m.history, **keep)
    return out


def test_threshold_model_without_one_is_exit_2(audio, features, tmp_path):
    old = _model_without(features, tmp_path / "old.safetensors")
    r = invoke("score", [old, audio, "--threshold", "model", "-o", tmp_path / "s.csv", "-q"])
    assert r.exit_code == 2
    assert re.fullmatch(r"ae-score: error: .*old\.safetensors stores no threshold .*\n", r.stderr)
    assert not (tmp_path / "s.csv").exists()
    r = invoke("score", [old, audio, "--max-fail-frac", "0.2", "-q"])  # no threshold asked: fine
    assert r.exit_code == 0 and len(read_csv(r.stdout)) == N_GOOD + 1


def test_model_without_feature_params_is_refused(audio, features, tmp_path):
    bare = _model_without(features, tmp_path / "bare.safetensors", feature_params=True)
    r = invoke("score", [bare, audio])
    assert r.exit_code == 2
    assert "records no feature parameters" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("value", ["abc", "nan", "inf"])
def test_bad_threshold_is_usage_error(features, audio, value):
    r = invoke("score", [trained(features, "baseline"), audio, "--threshold", value])
    assert r.exit_code == 2 and r.stderr.startswith("ae-score: error: ") and r.stdout == ""


def test_failures_stop_the_run_and_leave_no_file(audio, features, tmp_path):
    model = trained(features, "baseline")
    out = tmp_path / "s.csv"
    r = invoke("score", [model, audio, "-o", out, "--on-error", "fail"])
    assert r.exit_code == 1 and "m05x.wav" in r.stderr and "--on-error: " in r.stderr
    assert "stopped at the first failed input" in r.stderr
    assert not out.exists()
    r = invoke("score", [model, audio, "-o", out])  # 1 of 12 failed > 5%
    assert r.exit_code == 1 and "1 of 12 inputs failed" in r.stderr and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary left either


def test_stdin_paths_and_root(audio, features):
    model = trained(features, "baseline")
    paths = [audio / "m02.wav", audio / "m01.wav"]
    r = invoke("score", [model, "-", "--root", audio.parent, "-q"],
               input="".join(f"{p}\n" for p in paths))
    assert r.exit_code == 0, r.stderr
    rows = read_csv(r.stdout)
    assert [row["id"] for row in rows] == ["a/m02", "a/m01"]  # stdin order kept
    assert [row["path"] for row in rows] == [str(p) for p in paths]


def test_score_files_is_lazy(audio, features, monkeypatch):
    """The first records come before the later files are even decoded (memory stays flat)."""
    import aekit
    from aekit.audio import featurize

    calls = []
    real = featurize._process
    monkeypatch.setattr(featurize, "_process", lambda task, *a: calls.append(task) or real(task, *a))
    model = aekit.load_model(trained(features, "baseline"))
    gen = aekit.score_files(model, sorted(audio.iterdir()), jobs=1, batch_size=2)
    first = next(gen)
    assert first.index == 0 and len(calls) == 1  # one task (of 3 files: guided sizes for 12 files, 1 job)
    gen.close()


def test_pipe_to_head(audio, features, env_bin):
    model = trained(features, "baseline")
    p = subprocess.run(f"{exe('ae-score')} {model} {audio} -j 2 --batch-size 2 "
                       "--max-fail-frac 0.2 -q | head -n 2", shell=True, env=env_bin,
                       capture_output=True, text=True)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "id,path,score,scorer" and lines[1].startswith("m00,")


def test_public_api_is_lazy_and_complete():
    code = ("import sys, aekit; assert 'torch' not in sys.modules, 'torch imported'; "
            "[getattr(aekit, n) for n in aekit.__all__]; print(len(aekit.__all__))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    import aekit

    for name in ("load_model", "score_files", "score_features", "score_array",
                 "featurize_files", "open_features"):
        assert name in aekit.__all__


def test_readme_api_example_runs(audio, features, tmp_path, monkeypatch):
    """The README's Python API example, run as written in a directory with its files."""
    import shutil

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = re.search(r"<!-- api-example: begin -->\n```python\n(.*?)```", readme,
                      flags=re.S).group(1)
    shutil.copy(trained(features, "baseline"), tmp_path / "model.safetensors")
    shutil.copytree(audio, tmp_path / "new")
    (tmp_path / "new" / "m05x.wav").unlink()
    shutil.copy(features, tmp_path / "features.h5")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    exec(compile(block, "README.md", "exec"), {})
    assert out.getvalue().strip()


def test_decision_report_matches_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score

    from aekit.evaluate.metrics import decision_report

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    for t in (-0.5, 0.7, 99.0):  # 99: nothing flagged, precision undefined -> 0
        got = decision_report(y, s, t)
        pred = (s > t).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
        assert got["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert got["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
        assert got["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))


def test_eval_reports_the_stored_thresholds_decisions(features, tmp_path):
    import json

    from sklearn.metrics import f1_score, precision_score, recall_score

    import aekit

    model = trained(features, "baseline")
    t = aekit.load_model(model).info["threshold"]
    with aekit.open_features(features) as ff:
        ids = ff.ids
    labels = tmp_path / "labels.csv"
    y = {i: k % 2 for k, i in enumerate(ids)}
    labels.write_text("id,anomaly\n" + "".join(f"{i},{y[i]}\n" for i in ids))
    scores_csv, report = tmp_path / "s.csv", tmp_path / "r.json"
    r = invoke("eval", [model, features, "--labels", labels, "--anomaly-column", "anomaly",
                        "--scores", scores_csv, "-o", report, "-q"])
    assert r.exit_code == 0, r.stderr
    got = json.loads(report.read_text())["anomaly"]["threshold"]
    rows = read_csv(scores_csv.read_text())
    yt = [y[row["id"]] for row in rows]
    pred = [int(float(row["mse"]) > t["value"]) for row in rows]
    assert got["value"] == t["value"] and got["method"] == t["method"]
    assert got["precision"] == pytest.approx(precision_score(yt, pred, zero_division=0))
    assert got["recall"] == pytest.approx(recall_score(yt, pred, zero_division=0))
    assert got["f1"] == pytest.approx(f1_score(yt, pred, zero_division=0))


def test_stored_threshold_refuses_a_damaged_value():
    """ae-score --threshold model and ae-eval's decisions use one check: a missing threshold
    and a value that is not a finite number are one-line errors, never all-0 decisions."""
    from types import SimpleNamespace

    from aekit.errors import InputError
    from aekit.evaluate.thresholds import stored_threshold

    def model(t):
        return SimpleNamespace(info={"threshold": t}, path="m.safetensors")

    assert stored_threshold(model({"value": 12.5, "method": "gamma"})) == 12.5
    with pytest.raises(InputError, match="stores no threshold"):
        stored_threshold(model(None))
    for bad in (float("nan"), float("inf"), "12", True):
        with pytest.raises(InputError, match="not a finite number"):
            stored_threshold(model({"value": bad}))


def test_output_naming_a_file_found_in_an_input_directory_is_refused(audio, features, tmp_path):
    """-o naming one of the audio files found inside an input directory (or listed on
    stdin, or reached through a symlink) is refused before any work, by ae-score and by
    ae-featurize: that file is left as it was."""
    import shutil

    model = trained(features, "baseline")
    d = tmp_path / "d"
    d.mkdir()
    wav = d / "x.wav"
    shutil.copy(sorted(audio.glob("*.wav"))[0], wav)
    before = wav.read_bytes()
    (tmp_path / "link.wav").symlink_to(wav)
    for cmd, args in [("score", [model, d, "-o", wav]),
                      ("score", [model, "-", "-o", tmp_path / "link.wav"]),
                      ("featurize", [d, "-o", tmp_path / "link.wav", *MEL])]:
        r = invoke(cmd, [*args, "-q"], input=f"{wav}\n")
        assert r.exit_code == 2, (cmd, r.stderr)
        assert "is the same file as input" in r.stderr and str(wav) in r.stderr
        assert wav.read_bytes() == before
