"""Issue 22: every bench row runs on the device chosen with --device (here: cpu, explicitly),
the frames benchmark's rows at tiny sizes, and CUDA refused where there is none."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench22_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def torch_state():
    """The rows set torch's threads (and the DCASE loop its anomaly mode): restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    torch.autograd.set_detect_anomaly(False)


def test_frames_rows_run_on_the_chosen_device(tmp_path, torch_state):
    bf = load("bench_frames")
    cfg = dict(bf.SMALL, clips=3)
    path = tmp_path / "f.h5"
    bf.write_features(path, cfg)
    windows = 3 * (cfg["frames"] - bf.CONTEXT + 1)  # 60
    for name in ("floor", "dcase2023-loop", "dcase2020-loop"):
        r = bf.run_row(name, str(path), cfg, "cpu", 1)
        assert r["device"] == "cpu" and r["threads"] == 1 and len(r["rates"]) == 1, r
        assert r["windows_per_s"] > 0
    # The floor's windows are the model's own windows of the clips, in the same layout.
    from aekit.models.frames import FramesAE, FramesConfig
    from aekit.data.store import FeatureFile

    w = bf._windows(str(path))
    assert w.shape == (windows, cfg["mels"] * bf.CONTEXT) and w.is_contiguous()
    with FeatureFile(str(path)) as ff:
        x = torch.from_numpy(ff.read(list(range(3))))
    m = FramesAE(FramesConfig(input_shape=(1, cfg["mels"], cfg["frames"]), hidden=(4,),
                              latent=2, context=bf.CONTEXT))
    k = cfg["frames"] - bf.CONTEXT + 1
    u = torch.arange(windows)
    assert torch.equal(m.gather_units(m.unit_store(x), u // k, u % k), w)


def test_frames_ae_train_rows_pass_the_device(tmp_path, monkeypatch, torch_state):
    bf = load("bench_frames")
    seen = []

    def fake_run(cmd, check):
        seen.append(cmd)
        log = Path(cmd[cmd.index("--log") + 1])
        log.write_text("epoch,train_loss,val_loss,lr,seconds,samples_per_s\n1,1,,0.001,1,123.5\n")

    monkeypatch.setattr(bf.subprocess, "run", fake_run)
    for mode in ("memory", "stream"):
        r = bf.run_row(f"ae-train/{mode}", "f.h5", bf.SMALL, "cpu", 1)
        assert r["device"] == "cpu" and r["rates"] == [123.5]
        cmd = seen[-1]
        assert cmd[cmd.index("--device") + 1] == "cpu"
        assert cmd[cmd.index("--data") + 1] == mode
        assert cmd[cmd.index("--threads") + 1] == "1"
        assert cmd[cmd.index("--arch") + 1] == "frames"


def test_train_rows_run_on_the_chosen_device(torch_state):
    bt = load("bench_train")
    for name in ("tutorial", "ae-train"):
        r = bt.run_one(name, bt.SMALL, 0, 1, 2, "cpu")
        assert r["name"] == name and r["device"] == "cpu" and r["samples_per_s"] > 0


def test_stream_pass_runs_on_the_chosen_device(tmp_path, torch_state):
    bs = load("bench_stream")
    path = tmp_path / "s.h5"
    bs.write_file(path, 30)
    for mode in ("memory", "stream"):
        r = bs.one(str(path), "frames", mode, False, 0, 1, "cpu")
        assert r["device"] == "cpu" and r["mode"] == mode
        assert r["units"] == 30 * (bs.SHAPE[-1] - 4)


def test_run_all_hands_the_device_to_every_model_benchmark():
    ra = load("run_all")
    assert "bench_frames.py" in ra.BENCHES
    for name in ra.BENCHES:
        cmd = ra.command(name, "cuda")
        if name in ra.ON_DEVICE:
            assert cmd[-2:] == ["--device", "cuda"], cmd
            assert '"--device"' in (BENCH / name).read_text()  # the script takes it
        else:
            assert "--device" not in cmd
    assert set(ra.ON_DEVICE) == {"bench_train.py", "bench_frames.py", "bench_stream.py",
                                 "bench_infer.py", "bench_score.py"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_refused_without_a_device(monkeypatch):
    from aekit.errors import InputError

    bf = load("bench_frames")
    with pytest.raises(InputError, match="CUDA is not available"):
        bf.main(["--small", "--device", "cuda"])
    bt = load("bench_train")
    monkeypatch.setattr(sys, "argv", ["bench_train.py", "--small", "--device", "cuda"])
    with pytest.raises(InputError, match="CUDA is not available"):
        bt.main()


def test_frames_step_flops_are_the_step_products_torch_counts():
    """The bound under the frames table: FLOPs of a step's matrix products per window,
    recomputed by torch's own counter over one forward and backward of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    from aekit.models.frames import FramesAE, FramesConfig

    bf = load("bench_frames")
    for cfg in (bf.SMALL, bf.FULL):
        m = FramesAE(FramesConfig(input_shape=(1, cfg["mels"], cfg["frames"]),
                                  hidden=cfg["hidden"], latent=cfg["latent"], context=bf.CONTEXT))
        x = torch.randn(8, cfg["mels"] * bf.CONTEXT)  # no gradient wanted for the input
        with FlopCounterMode(display=False) as counter:
            out, _ = m(x)
            torch.nn.functional.mse_loss(out, x).backward()
        products = sum(v for k, v in counter.get_flop_counts()["Global"].items()
                       if str(k).split(".")[-1] in ("mm", "addmm"))
        assert products == 8 * bf.step_flops_per_window(cfg)
