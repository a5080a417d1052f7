"""ae-train: architectures, loss, resume after SIGTERM, NaN guard, bad inputs (tiny models only)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import BIN, invoke, write_features, write_splits

from aekit.train import faststep as fs
from aekit.train import loop as tr
from aekit.train.distributed import distributed_env
from aekit.train.faststep import StepInBackward
from aekit.train.schedule import lr_at
from aekit.train.settings import make_settings
from aekit.cmds.train import SIGTERM_AT_STEP_ENV, cli
from aekit.train.batches import batch_sizes, epoch_order
from aekit.models.modelfile import load_model, read_info
from aekit.models.mlp import AEConfig
from aekit.models.base import count_parameters, layer_summary
from aekit.models.registry import build_model

SMALL = ["--hidden", "32,16", "--latent", "8"]


def run(args, env=None):
    return invoke(cli, args, env=env)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one thread


@pytest.fixture()
def feats(tmp_path):
    p = tmp_path / "f.h5"
    ids, x = write_features(p)
    return p, ids, x


def tensors(path):
    return load_file(str(path))


def assert_same_weights(a, b):
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


# --------------------------------------------------------------------------- architectures

def test_layer_lists_and_parameter_counts_at_default_widths():
    base = build_model(AEConfig(arch="baseline"), "meta")
    imp = build_model(AEConfig(arch="improved"), "meta")
    widths = [25024, 8224, 2056, 1024, 512, 256]
    enc = list(zip(widths[:-1], widths[1:]))
    dec = [(b, a) for a, b in reversed(enc)]
    linears = [f"Linear({a}->{b})" for a, b in enc + dec]
    assert layer_summary(base) == [x for lin in linears[:-1] for x in (lin, "ReLU")] + [linears[-1]]
    blocks = [(lin, f"BatchNorm1d({b})", "LeakyReLU(0.1)")
              for (a, b), lin in zip(enc + dec, linears[:-1])]
    assert layer_summary(imp) == [x for blk in blocks for x in blk] + [linears[-1]]
    linear_params = sum(a * b + b for a, b in enc + dec)
    assert count_parameters(base) == linear_params == 450_982_160
    bn_params = 2 * sum(b for _, b in (enc + dec)[:-1])
    assert count_parameters(imp) == linear_params + bn_params == 451_029_936


def test_presets():
    tut = make_settings("tutorial")
    assert (tut.normalize, tut.schedule, tut.balanced_batches, tut.lr, tut.batch_size, tut.epochs,
            tut.keep, tut.precision) == ("none", "constant", False, 1e-3, 25, 20, "last", "fp32")
    d = make_settings("default")
    assert (d.normalize, d.schedule, d.balanced_batches) == ("global", "cosine", True)
    assert make_settings("tutorial", normalize="global").normalize == "global"  # explicit wins


def test_batches_and_order():
    assert batch_sizes(184, 25, balanced=False) == [25] * 7 + [9]
    assert batch_sizes(184, 25, balanced=True) == [23] * 8
    assert batch_sizes(26, 25, balanced=True) == [13, 13]
    a = epoch_order(10, seed=1, epoch=3)
    assert torch.equal(a, epoch_order(10, seed=1, epoch=3))
    assert not torch.equal(a, epoch_order(10, seed=1, epoch=4))
    shards = [epoch_order(11, 1, 0, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 6
    assert set(torch.cat(shards).tolist()) == set(range(11))
    blocked = epoch_order(1000, 1, 0, block=256)
    assert sorted(blocked.tolist()) == list(range(1000))
    block_sets = [set(range(lo, min(1000, lo + 256))) for lo in range(0, 1000, 256)]
    assert set(blocked[:256].tolist()) in block_sets


def test_lr_schedule():
    s = make_settings("default", epochs=10)
    lrs = [lr_at(i, 100, 10, s) for i in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert lrs[-1] == pytest.approx(1e-5, rel=0.05)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(57, 100, 10, make_settings("tutorial")) == 1e-3


# --------------------------------------------------------------------------- training

@pytest.mark.parametrize("arch", ["baseline", "improved"])
def test_loss_falls_and_model_file(tmp_path, feats, arch, monkeypatch):
    p, ids, x = feats
    out, log = tmp_path / "m.safetensors", tmp_path / "log.csv"
    args = [str(a) for a in [p, "-o", out, *SMALL, "--arch", arch, "--epochs", "8", "--log", log,
                             "--lr", "3e-3", "--batch-size", "8"]]
    monkeypatch.setattr(sys, "argv", ["/some/venv/bin/ae-train", *args])
    res = run(args)
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    info = read_info(out)
    h = info["history"]
    assert len(h) == 8 and h[-1]["train_loss"] < 0.6 * h[0]["train_loss"]
    assert info["seed"] == 42 and info["preset"] == "default" and info["normalize"] == "global"
    assert info["config"]["arch"] == arch and info["config"]["input_shape"] == [2, 4, 10]
    assert info["feature_params"]["window"] == "hann"
    assert info["command"] == shlex.join(["ae-train", *args])  # program basename + arguments
    assert info["versions"]["torch"] == torch.__version__
    rows = log.read_text().splitlines()
    assert rows[0] == "epoch,train_loss,val_loss,lr,seconds,samples_per_s" and len(rows) == 9
    assert "epoch 8/8" in res.stderr
    assert (tmp_path / "m.safetensors.ckpt" / "last.pt").exists()
    lm = load_model(out)
    rec, z = lm.reconstruct(torch.from_numpy(x[:3]))
    assert rec.shape == (3, 2, 4, 10) and z.shape == (3, 8)


def test_losses_in_db_and_validation_fold(tmp_path, feats):
    """Validation loss equals the MSE of the de-normalized reconstruction, in dB squared."""
    p, ids, x = feats
    sp = tmp_path / "splits.csv"
    write_splits(sp, ids)
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--epochs", "3", "--splits", sp, "--fold", "1",
               "--normalize", "per-feature", "--keep", "last"])
    assert res.exit_code == 0, res.stderr
    info = read_info(out)
    # 40 ids: every 5th is test (8); the other 32 alternate folds 0/1.
    val_idx = [i for i in range(40) if i % 5 != 4 and i % 2 == 1]
    assert info["n_train"] == 32 - len(val_idx) and info["n_val"] == len(val_idx)
    assert info["fold"] == 1
    lm = load_model(out)
    xv = torch.from_numpy(x[val_idx])
    rec, _ = lm.reconstruct(xv)
    mse = float(((rec.double() - xv.double()) ** 2).mean())
    assert info["history"][-1]["val_loss"] == pytest.approx(mse, rel=1e-4)


def test_where_keeps_matching_rows(tmp_path, feats):
    p, ids, _ = feats
    lab = tmp_path / "labels.csv"
    lab.write_text("id,anomaly\n" + "".join(f"{i},{int(k % 4 == 0)}\n" for k, i in enumerate(ids)))
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--epochs", "1", "--labels", lab, "--where", "anomaly == 0"])
    assert res.exit_code == 0, res.stderr
    assert read_info(out)["n_train"] == 30


def test_tutorial_preset_runs_and_is_deterministic(tmp_path, feats):
    p, _, _ = feats
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out in (a, b):
        res = run([p, "-o", out, *SMALL, "--epochs", "2", "--preset", "tutorial", "--seed", "7"])
        assert res.exit_code == 0, res.stderr
    assert_same_weights(a, b)
    info = read_info(a)
    assert (info["preset"], info["normalize"], info["weights"]) == ("tutorial", "none", "last")


@pytest.mark.parametrize("workers", [0, 1])
def test_stream_equals_memory(tmp_path, feats, workers):
    """Streaming from HDF5 (workers open the file themselves) trains the same weights."""
    p, _, _ = feats
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run([p, "-o", a, *SMALL, "--epochs", "2", "--data", "memory"]).exit_code == 0
    res = run([p, "-o", b, *SMALL, "--epochs", "2", "--data", "stream", "--workers", workers])
    assert res.exit_code == 0, res.stderr
    assert_same_weights(a, b)


def test_bf16_autocast_runs(tmp_path, feats):
    p, _, x = feats
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--epochs", "2", "--precision", "bf16"])
    assert res.exit_code == 0, res.stderr
    info = read_info(out)
    assert info["settings"]["precision"] == "bf16"
    assert all(np.isfinite(h["train_loss"]) for h in info["history"])
    assert tensors(out)["model.encoder.0.weight"].dtype == torch.float32  # weights stay fp32
    # the same training in fp32: equal within bf16's precision (8 significant bits, unit
    # roundoff 2**-8 = 0.4%; measured: losses within 0.2%, scores within 0.15%), not equal
    ref = tmp_path / "fp32.safetensors"
    res = run([p, "-o", ref, *SMALL, "--epochs", "2", "--precision", "fp32"])
    assert res.exit_code == 0, res.stderr
    loss = [h["train_loss"] for h in info["history"]]
    want = [h["train_loss"] for h in read_info(ref)["history"]]
    assert loss == pytest.approx(want, rel=2 ** -8) and loss != want  # autocast did run
    import aekit

    got = aekit.score_features(load_model(out), x, score="mse")
    np.testing.assert_allclose(got, aekit.score_features(load_model(ref), x, score="mse"),
                               rtol=2 ** -8)


def test_early_stop_and_best_weights(tmp_path, feats):
    p, ids, _ = feats
    sp = tmp_path / "splits.csv"
    write_splits(sp, ids)
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--epochs", "30", "--lr", "0.3", "--schedule", "constant",
               "--splits", sp, "--fold", "0", "--early-stop", "2"])
    assert res.exit_code == 0, res.stderr
    info = read_info(out)
    hist = info["history"]
    vals = [h["val_loss"] for h in hist]
    assert info["best_epoch"] == 1 + int(np.argmin(vals))
    # lr 0.3 overshoots at once: the best epoch comes early and two worse ones stop the run.
    assert info["stopped_early"] is True and len(hist) < 30
    assert len(hist) == info["best_epoch"] + 2
    assert info["weights"] == "best"
    assert (tmp_path / "m.safetensors.ckpt" / "best.pt").exists()


# --------------------------------------------------------------------------- resume

@pytest.mark.parametrize("stop_step,data", [(3, "memory"), (4, "memory"), (2, "stream")])
def test_resume_after_sigterm_is_bit_equal(tmp_path, feats, monkeypatch, stop_step, data):
    p, ids, _ = feats
    sp = tmp_path / "splits.csv"
    write_splits(sp, ids)
    # 16 training rows (fold 0 of 32 train rows is validation) in 4 batches of 4;
    # stop at step 3 (mid-epoch) or 4 (end of the epoch's batches) of epoch 2.
    args = [p, *SMALL, "--epochs", "3", "--batch-size", "4", "--splits", sp, "--fold", "0",
            "--data", data, "--workers", "0"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert run([*args, "-o", full]).exit_code == 0
    monkeypatch.setenv(SIGTERM_AT_STEP_ENV, str(4 + stop_step))  # epoch 2
    res = run([*args, "-o", part])
    assert res.exit_code == 3, res.stderr
    assert "--resume" in res.stderr and not part.exists()
    ck = tr.load_checkpoint(tmp_path / "part.safetensors.ckpt" / "last.pt")
    assert (ck["epoch"], ck["step"]) == ((1, stop_step) if stop_step < 4 else (1, 4))
    assert len(ck["perm"]) == 16 and len(ck["history"]) == 1
    monkeypatch.delenv(SIGTERM_AT_STEP_ENV)
    res = run([*args, "-o", part, "--resume"])
    assert res.exit_code == 0, res.stderr
    assert_same_weights(full, part)
    hf, hp = read_info(full)["history"], read_info(part)["history"]
    assert [h["train_loss"] for h in hf] == [h["train_loss"] for h in hp]
    assert [h["val_loss"] for h in hf] == [h["val_loss"] for h in hp]


def test_sigusr1_stops_too_and_resume_after_finish_rewrites(tmp_path, feats, monkeypatch):
    import signal

    import aekit.cmds.train as cmd

    p, _, _ = feats
    out = tmp_path / "m.safetensors"

    def hook():
        return lambda step: os.kill(os.getpid(), signal.SIGUSR1) if step == 2 else None

    monkeypatch.setattr(cmd, "_self_sigterm_hook", hook)
    res = run([p, "-o", out, *SMALL, "--epochs", "2"])
    assert res.exit_code == 3 and not out.exists()
    monkeypatch.undo()
    assert run([p, "-o", out, *SMALL, "--epochs", "2", "--resume"]).exit_code == 0
    first = tensors(out)
    out.unlink()
    res = run([p, "-o", out, *SMALL, "--epochs", "2", "--resume"])  # nothing left to train
    assert res.exit_code == 0 and len(read_info(out)["history"]) == 2
    assert all(torch.equal(first[k], v) for k, v in tensors(out).items())


def test_distributed_env():
    assert not distributed_env({}).enabled
    d = distributed_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                            "LOCAL_WORLD_SIZE": "2"})
    assert (d.rank, d.world, d.local_rank, d.local_world) == (1, 4, 1, 2)
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
             "SLURM_NTASKS_PER_NODE": "2(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    d = distributed_env(slurm)
    assert (d.rank, d.world, d.local_rank, d.local_world) == (3, 4, 1, 2)
    assert not distributed_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).enabled
    with pytest.raises(tr.InputError, match="MASTER_ADDR"):
        distributed_env({k: v for k, v in slurm.items() if not k.startswith("MASTER")})


def test_sigterm_subprocess_then_resume(tmp_path, feats):
    """The installed executable, a real SIGTERM, status 3, then --resume to the same weights."""
    p, _, _ = feats
    args = [str(BIN / "ae-train"), str(p), *SMALL, "--epochs", "2", "--batch-size", "8", "-q"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert run([*args[1:], "-o", full]).exit_code == 0  # the reference, in-process
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env[SIGTERM_AT_STEP_ENV] = "3"
    r = subprocess.run([*args, "-o", str(part)], env=env, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "resume" in r.stderr
    del env[SIGTERM_AT_STEP_ENV]
    r = subprocess.run([*args, "-o", str(part), "--resume"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert_same_weights(full, part)


# --------------------------------------------------------------------------- NaN guard

def test_nan_loss_stops_with_exit_1(tmp_path, feats):
    p, _, _ = feats
    out = tmp_path / "m.safetensors"
    res = run([p, "-o", out, *SMALL, "--epochs", "3", "--lr", "1e30", "--preset", "tutorial"])
    assert res.exit_code == 1
    assert "NaN or Inf" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_nan_guard_keeps_last_good_checkpoint(tmp_path, feats, monkeypatch):
    p, _, _ = feats
    out = tmp_path / "m.safetensors"
    real = tr._mse_db
    calls = {"n": 0}

    def poisoned(*a):
        calls["n"] += 1
        loss = real(*a)
        return loss * float("nan") if calls["n"] > 3 else loss  # epoch 1 = 2 steps

    monkeypatch.setattr(tr, "_mse_db", poisoned)
    res = run([p, "-o", out, *SMALL, "--epochs", "3"])
    assert res.exit_code == 1, res.stderr
    assert "epoch 2" in res.stderr and "last good checkpoint" in res.stderr
    ck = tr.load_checkpoint(tmp_path / "m.safetensors.ckpt" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not out.exists()


# --------------------------------------------------------------------------- bad input

def test_bad_inputs_exit_2(tmp_path, feats):
    p, ids, _ = feats
    out = tmp_path / "m.safetensors"
    sp = tmp_path / "splits.csv"
    write_splits(sp, ids)
    bad_sp = tmp_path / "bad.csv"
    bad_sp.write_text("id,split,fold\nclip000,train,0\nnope,train,1\n")
    lab = tmp_path / "labels.csv"
    lab.write_text("id,anomaly\n" + "".join(f"{i},1\n" for i in ids))
    cases = [
        (["--splits", bad_sp], "not in the features file"),
        (["--splits", sp, "--fold", "5"], "out of range"),
        (["--labels", lab, "--where", "anomaly == 0"], "empty training set"),
        (["--labels", lab, "--where", "nonsense ==="], "--where: bad expression"),
        (["--where", "anomaly == 0"], "--where: needs a labels file"),
        (["--fold", "0"], "--fold needs --splits"),
        (["--early-stop", "2"], "--early-stop: needs a validation set"),
        (["--resume"], "--resume: no checkpoint at"),
        (["--hidden", "3,x"], "comma-separated"),
    ]
    for extra, msg in cases:
        res = run([p, "-o", out, *SMALL, "--epochs", "1", *extra])
        assert res.exit_code == 2, (extra, res.stderr)
        assert msg in res.stderr, (extra, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 4
    res = run([tmp_path / "missing.h5", "-o", out])
    assert res.exit_code == 2 and "no such file" in res.stderr
    assert not out.exists()


def test_resume_with_other_args_or_shape_is_refused(tmp_path, feats, monkeypatch):
    p, _, _ = feats
    out = tmp_path / "m.safetensors"
    monkeypatch.setenv(SIGTERM_AT_STEP_ENV, "1")
    assert run([p, "-o", out, *SMALL, "--epochs", "2"]).exit_code == 3
    monkeypatch.delenv(SIGTERM_AT_STEP_ENV)
    res = run([p, "-o", out, "--hidden", "32,12", "--latent", "8", "--epochs", "2", "--resume"])
    assert res.exit_code == 2 and "hidden: checkpoint [32, 16], now [32, 12]" in res.stderr
    res = run([p, "-o", out, *SMALL, "--arch", "baseline", "--epochs", "2", "--resume"])
    assert res.exit_code == 2 and "arch: checkpoint improved, now baseline" in res.stderr
    other = tmp_path / "other.h5"
    write_features(other, shape=(2, 4, 12))
    res = run([other, "-o", out, *SMALL, "--epochs", "2", "--resume"])
    assert res.exit_code == 2 and "input_shape: checkpoint [2, 4, 10], now [2, 4, 12]" in res.stderr


def test_checkpoint_loads_weights_only(tmp_path, feats):
    p, _, _ = feats
    out = tmp_path / "m.safetensors"
    assert run([p, "-o", out, *SMALL, "--epochs", "1"]).exit_code == 0
    ck = torch.load(tmp_path / "m.safetensors.ckpt" / "last.pt", weights_only=True)
    assert ck["format"] == "aekit-train-checkpoint" and ck["epoch"] == 1
    assert {"model", "optimizer", "schedule", "normalizer", "rng", "history", "settings"} <= set(ck)
    json.dumps(ck["settings"])


class _Halves:
    """Two units per clip (the halves of its frames): a stand-in for a multi-unit model."""

    def units_per_clip(self, frames):
        return 2

    def take_units(self, clips, offsets):
        h = clips.shape[-1] // 2
        halves = torch.stack([clips[..., :h], clips[..., h:2 * h]], 1)  # [B, 2, C, M, h]
        return halves[torch.arange(clips.shape[0]), offsets].flatten(1)

    def unit_store(self, x):  # as models.ClipModel's
        return x

    def gather_units(self, x, clip, offsets):  # as models.ClipModel's
        return self.take_units(x.index_select(0, clip), offsets)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("model", [None, _Halves()], ids=["clips", "halves"])
def test_stream_blocks_serve_the_same_units_as_memory(tmp_path, workers, model):
    """Blocks read ahead on a thread, batches spanning blocks, any order (block-local or
    not, DDP-padded with repeats): every batch equals the in-memory source's, bit for bit."""
    from aekit.train.batches import MemorySource, StreamSource
    from aekit.models.modelfile import Normalizer
    from aekit.data.store import FeatureFile

    p = tmp_path / "f.h5"
    _, x = write_features(p, n=23)
    rows = np.array([0, 1, 2, 4, 5, 7, 8, 9, 10, 11, 12, 15, 16, 17, 18, 19, 20, 22])
    norm = Normalizer("global")
    norm.load(torch.tensor([-40.0]), torch.tensor([20.0]))
    with FeatureFile(p) as ff:
        mem = MemorySource(ff, rows, norm, torch.device("cpu"), model=model)
        stream = StreamSource(ff, rows, norm, torch.device("cpu"), workers=workers,
                              model=model, block=4)
    mem.prepare()
    n = len(mem)
    assert len(stream) == n == rows.size * (1 if model is None else 2)
    orders = [epoch_order(n, 3, 0, block=4 * stream.k), torch.randperm(n),
              epoch_order(n, 3, 1, 1, 3, block=4 * stream.k)]
    for order in orders:
        sizes = batch_sizes(order.numel(), 5, False)
        got = list(stream.batches(order, sizes, 1))
        want = list(mem.batches(order, sizes, 1))
        assert len(got) == len(want) == len(sizes) - 1
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    assert torch.equal(torch.cat(list(stream.blocks(7))), torch.cat(list(mem.blocks(7))))


@pytest.mark.parametrize("arch", ["improved", "baseline", "frames"])
def test_step_in_backward_is_bit_identical_to_opt_step(arch):
    """Adam run per parameter inside backward (ae-train's single-process step) leaves the
    same weights, moments and step counts as zero_grad + backward + opt.step(), bit for bit,
    through a changing lr, a resumed optimizer state, and frees every gradient."""
    import contextlib
    import copy

    from aekit.models.registry import make_config

    cfg = make_config(arch, (2, 4, 10), hidden=(16, 8), latent=4)
    torch.manual_seed(0)
    a = build_model(cfg, torch.device("cpu"))
    b = copy.deepcopy(a)
    width = next(m for m in a.modules() if isinstance(m, torch.nn.Linear)).in_features
    init = copy.deepcopy(a.state_dict())
    oa, ob = tr.make_optimizer(a.parameters(), 1e-3), tr.make_optimizer(b.parameters(), 1e-3)
    stepper = StepInBackward(b, ob)
    assert stepper.linears  # the Linear layers step inside their own backward
    amp = contextlib.nullcontext()
    for i in range(6):
        if i == 3:  # a resume: the optimizer state replaced by load_state_dict
            ob.load_state_dict(copy.deepcopy(oa.state_dict()))
        x = torch.randn(5, width)
        for g in oa.param_groups + ob.param_groups:
            g["lr"] = 1e-3 * (i + 1)
        la = tr.train_step(a, oa, x, None, amp)
        lb = tr.train_step(b, ob, x, None, amp)
        assert torch.equal(la, lb)
        assert all(p.grad is None for p in b.parameters())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name]), (k, name)
    # and the steps moved every weight at all (the comparison is not vacuous)
    assert all(not torch.equal(v, init[k]) for k, v in a.state_dict().items())
    assert stepper._scratch is not None  # the fused path ran (not only the hooks)


def test_step_in_backward_refuses_a_linear_used_twice_and_can_be_removed():
    import contextlib

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 6)

        def forward(self, x):
            y = self.lin(self.lin(x))
            return y, y

    torch.manual_seed(0)
    net = Twice()
    opt = tr.make_optimizer(net.parameters(), 1e-3)
    stepper = StepInBackward(net, opt)
    with pytest.raises(RuntimeError, match="used twice in one forward"):
        tr.train_step(net, opt, torch.randn(4, 6), None, contextlib.nullcontext())
    stepper.remove()
    assert "forward" not in vars(net.lin) and not getattr(opt, "aekit_step_in_backward")
    frozen = torch.nn.Linear(3, 3)
    frozen.bias.requires_grad_(False)  # a frozen bias is never stepped: left to the hooks path
    assert StepInBackward(frozen, tr.make_optimizer([frozen.weight], 1e-3)).linears == []
    tr.train_step(net, opt, torch.randn(4, 6), None, contextlib.nullcontext())  # plain step


def test_stream_read_error_reaches_a_slow_consumer(tmp_path):
    """A bad block met by the read-ahead thread while its queue is full and the step is slow
    is raised in the consumer as its one-line error, not lost (a lost error hung training)."""
    import threading
    import time

    import h5py

    from aekit.train.batches import StreamSource
    from aekit.errors import AekitError
    from aekit.models.modelfile import Normalizer
    from aekit.data.store import FeatureFile

    p = tmp_path / "f.h5"
    write_features(p, n=12)
    with h5py.File(p, "r+") as f:
        # clip 7, in block 3 of 2 clips: read while blocks 1 and 2 fill the queue (2 ahead)
        f["features"][7, 0, 0, 0] = np.nan
    norm = Normalizer("none")
    with FeatureFile(p) as ff:
        stream = StreamSource(ff, np.arange(12), norm, torch.device("cpu"), workers=2, block=2)
    order = torch.arange(12)
    batches = stream.batches(order, [2] * 6)
    next(batches)
    time.sleep(1.5)  # the thread fills its queue, then meets the bad block while waiting
    out: list = []

    def consume():
        try:
            list(batches)
        except AekitError as exc:
            out.append(exc)

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "the consumer waits forever: the reader's error was lost"
    assert len(out) == 1 and "clip007" in str(out[0])


def test_skinny_linear_blocks_equal_one_product():
    """A large layer at a small batch runs by row blocks on the CPU: the same outputs as
    F.linear to float32 rounding, the ragged last block included; large batches untouched."""
    torch.manual_seed(0)
    w, b = torch.randn(fs.SKINNY_MIN_OUT + 37, 96), torch.randn(fs.SKINNY_MIN_OUT + 37)
    x = torch.randn(5, 96)
    got, want = fs._skinny_linear(x, w, b), torch.nn.functional.linear(x, w, b)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(fs._skinny_linear(x, w, None), fs._skinny_linear(x, w, None))
    big = torch.randn(fs.SKINNY_ROWS + 1, 96)
    assert torch.equal(fs._skinny_linear(big, w, b), torch.nn.functional.linear(big, w, b))
