"""Issue 21, training: the fast step behind one switch (aekit.train.faststep), the model built
once, one job object, checkpoints written in one place, errors naming parameters, not flags."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_features, write_splits

from aekit.errors import InputError
from aekit.train import faststep
from aekit.train import loop as tr
from aekit.train.settings import make_settings

SMALL = dict(hidden=(16, 8), latent=4, epochs=2, batch_size=8, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture()
def feats(tmp_path):
    p = tmp_path / "f.h5"
    ids, _ = write_features(p, n=24)
    write_splits(tmp_path / "s.csv", ids)
    return p


def _train(feats, out, **job):
    return tr.train(feats, out, make_settings(**SMALL), device=torch.device("cpu"), **job)


def test_the_switch_decides_fast_or_plain_and_both_train_the_same_weights(feats, tmp_path,
                                                                          monkeypatch):
    """One switch (faststep.applies) picks the step; the loop runs either: the same weights,
    bit for bit; a small model gets the plain step by default."""
    attached = []
    real_attach = faststep.attach
    monkeypatch.setattr(faststep, "attach",
                        lambda m, o, fast: attached.append(fast) or real_attach(m, o, fast))
    _train(feats, tmp_path / "plain.safetensors", splits=tmp_path / "s.csv", fold=0)
    monkeypatch.setattr(faststep, "applies", lambda distributed, model: True)
    _train(feats, tmp_path / "fast.safetensors", splits=tmp_path / "s.csv", fold=0)
    assert attached == [False, True]
    a, b = load_file(str(tmp_path / "fast.safetensors")), load_file(str(tmp_path / "plain.safetensors"))
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_switch_values():
    """In backward from MIN_PARAMETERS trained parameters, in one process only."""
    n = faststep.MIN_PARAMETERS
    assert n == 1 << 23
    at = torch.nn.Linear(n // 2048, 2048, bias=False, device="meta")  # exactly n
    below = torch.nn.Linear(n // 2048, 2047, device="meta")  # n - 4096 + 2047 < n
    assert sum(p.numel() for p in at.parameters()) == n
    assert (faststep.applies(False, at), faststep.applies(True, at)) == (True, False)
    assert faststep.applies(False, below) is False
    frozen = torch.nn.Sequential(torch.nn.Linear(n // 2048, 2048, bias=False, device="meta"),
                                 torch.nn.Linear(4, 4, device="meta"))
    frozen[0].weight.requires_grad_(False)  # only trained parameters count
    assert faststep.applies(False, frozen) is False
    net = torch.nn.Linear(3, 3)
    opt = tr.make_optimizer(net.parameters(), 1e-3)
    assert faststep.attach(net, opt, False) is None and not getattr(opt, "aekit_step_in_backward", False)
    stepper = faststep.attach(net, opt, True)
    assert isinstance(stepper, faststep.StepInBackward) and opt.aekit_step_in_backward is True


def test_the_model_is_built_once_on_the_training_device(feats, tmp_path, monkeypatch):
    built = []
    real = tr.build_model
    monkeypatch.setattr(tr, "build_model", lambda cfg, dev: built.append(str(dev)) or real(cfg, dev))
    _train(feats, tmp_path / "m.safetensors")
    assert built == ["cpu"]  # no second model on 'meta' for the shapes


def test_checkpoints_are_written_in_one_place_and_hold_the_job(feats, tmp_path, monkeypatch):
    """Every checkpoint file, the stop's included, is written by loop.write_checkpoint."""
    calls, inside = [], []
    real_write, real_save = tr.write_checkpoint, tr.save_checkpoint

    def write(run, state, kind, barrier=True):
        inside.append(kind)
        try:
            return real_write(run, state, kind, barrier)
        finally:
            inside.pop()

    monkeypatch.setattr(tr, "write_checkpoint", write)
    monkeypatch.setattr(tr, "save_checkpoint",
                        lambda path, ck: calls.append((path.name, list(inside))) or real_save(path, ck))
    out = tmp_path / "m.safetensors"
    _train(feats, out, splits=tmp_path / "s.csv", fold=1, checkpoint_every=2)
    # epoch 1: best; epoch 2: best if better, then last (checkpoint_every=2, the last epoch)
    assert calls[0] == ("best.pt", ["best"]) and calls[-1] == ("last.pt", ["last"])
    assert all(inner == [name.removesuffix(".pt")] for name, inner in calls)
    assert [c[0] for c in calls].count("last.pt") == 1
    steps = iter(range(100))
    with pytest.raises(tr.Preempted):
        _train(feats, tmp_path / "p.safetensors", stop_requested=lambda: next(steps) == 2)
    assert calls[-1] == ("last.pt", ["last"])
    ck = tr.load_checkpoint(tmp_path / "m.safetensors.ckpt" / "last.pt")
    assert ck["args"] == {"features": str(feats), "output": str(out),
                          "splits": str(tmp_path / "s.csv"), "fold": 1, "labels": None,
                          "where": None, "checkpoint_every": 2, "data_mode": "auto"}
    best = tr.load_checkpoint(tmp_path / "m.safetensors.ckpt" / "best.pt")
    hist = ck["history"]
    want = min(range(len(hist)), key=lambda i: hist[i]["val_loss"])
    assert best["kind"] == "best" and best["epoch"] == want + 1
    assert best["val_loss"] == hist[want]["val_loss"] == ck["best_val"]


def test_a_notebook_user_is_told_parameters_not_flags(feats, tmp_path):
    with pytest.raises(InputError) as e:
        tr.load_checkpoint(tmp_path / "nowhere.pt")
    assert str(e.value) == f"no checkpoint at {tmp_path / 'nowhere.pt'}"
    with pytest.raises(InputError) as e:
        _train(feats, tmp_path / "m.safetensors", resume=True)
    assert e.value.param == "resume"
    assert str(e.value) == (f"resume: no checkpoint at {tmp_path / 'm.safetensors.ckpt' / 'last.pt'}"
                            "; start without resuming")
    with pytest.raises(InputError) as e:
        tr.train(feats, tmp_path / "m.safetensors", make_settings(**SMALL, early_stop=2))
    assert str(e.value) == "early_stop: needs a validation set: give the splits and a fold"
    with pytest.raises(InputError) as e:
        _train(feats, tmp_path / "m.safetensors", checkpoint_every=0)
    assert str(e.value) == "checkpoint_every: must be at least 1"
    with pytest.raises(InputError) as e:
        _train(feats, tmp_path / "m.safetensors", where="anomaly == 1")
    assert str(e.value) == "where: needs a labels file"


def test_a_stop_names_no_flag(feats, tmp_path):
    with pytest.raises(tr.Preempted) as e:
        _train(feats, tmp_path / "m.safetensors", stop_requested=lambda: True)
    ck = tmp_path / "m.safetensors.ckpt" / "last.pt"
    assert (e.value.epoch, e.value.step, e.value.checkpoint) == (1, 1, ck)
    assert str(e.value) == (f"stopped at epoch 1 step 1; checkpoint {ck}; "
                            "train again with resume=True to continue")


def test_the_training_log_is_csv_in_the_one_dialect(tmp_path):
    """--log: '\\n' line ends (the dialect of aekit.system.csvout), not the csv module's CRLF."""
    from aekit.train.state import write_log

    path = tmp_path / "log.csv"
    write_log(str(path), [{"epoch": 1, "train_loss": 0.5, "val_loss": None, "lr": 1e-3,
                           "seconds": 2.0, "samples_per_s": 10.0}])
    assert path.read_bytes() == (b"epoch,train_loss,val_loss,lr,seconds,samples_per_s\n"
                                 b"1,0.5,,0.001,2,10\n")
