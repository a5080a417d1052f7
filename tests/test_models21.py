"""Issue 21, models: one registry of model kinds. The README's "How to add a model" followed
literally -- one new module (written here to tmp_path) with one ``register(...)`` call -- gives
a kind that ae-train trains (its own option, its own defaults) and ae-eval scores; an option
the chosen kind does not use is refused, not silently recorded; the registry is torch-free and
finds the built-in kinds and entry-point kinds by itself."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import SHAPE, invoke, one_error_line, write_features

from aekit.cmds.eval import cli as eval_cli
from aekit.cmds.train import cli as train_cli
from aekit.errors import InputError
from aekit.models import registry
from aekit.models.modelfile import load_model, read_info
from aekit.train import settings as S

#: The one new module: a config, a ClipModel subclass and one registration (README).
MODULE = '''
"""A throwaway model kind: a one-hidden-layer autoencoder over the whole clip."""
from dataclasses import dataclass

from torch import nn

from aekit.models.base import ClipModel
from aekit.models.registry import ModelOption, register


@dataclass
class TinyConfig:
    arch: str = "NAME"
    input_shape: tuple = (2, 4, 10)
    latent: int = 3
    width: int = 6


class Tiny(ClipModel):
    def __init__(self, config):
        super().__init__()
        self.config = config
        c, m, t = config.input_shape
        d = c * m * t
        self.encoder = nn.Sequential(nn.Linear(d, config.width), nn.Tanh(),
                                     nn.Linear(config.width, config.latent))
        self.decoder = nn.Sequential(nn.Linear(config.latent, config.width), nn.Tanh(),
                                     nn.Linear(config.width, d))

    def forward(self, units):
        z = self.encoder(units)
        return self.decoder(z), z


register("NAME", TinyConfig, Tiny, help="a throwaway kind", defaults={"batch_size": 4, "epochs": 2},
         options={"width": ModelOption("Hidden width (NAME).", min=2)})
'''


def write_kind(tmp_path, name: str, module: str):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(MODULE).replace("NAME", name))


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """The kind 'tiny21' from the one module tiny21mod.py, imported (a notebook's route)."""
    torch.set_num_threads(1)
    write_kind(tmp_path, "tiny21", "tiny21mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("tiny21mod")
    yield "tiny21"
    registry._REGISTRY.pop("tiny21", None)
    sys.modules.pop("tiny21mod", None)


def test_a_new_kind_is_one_module_and_one_registration(tmp_path, tiny):
    ids, x = write_features(tmp_path / "f.h5", n=12)
    model = tmp_path / "m.safetensors"
    r = invoke(train_cli, [tmp_path / "f.h5", "-o", model, "--arch", tiny, "--width", "5",
                           "--seed", "1"])
    assert r.exit_code == 0, r.stderr
    lm = load_model(model)
    assert type(lm.model).__name__ == "Tiny"
    assert (lm.config.width, lm.config.latent, tuple(lm.config.input_shape)) == (5, 3, SHAPE)
    settings = read_info(model)["settings"]
    # The kind's own defaults (batch 4, 2 epochs) and option; no hidden widths recorded.
    assert (settings["batch_size"], settings["epochs"], settings["model_options"]) == (
        4, 2, {"width": 5})
    assert settings["hidden"] is None and settings["latent"] == 3
    assert len(lm.info["history"]) == 2

    r = invoke(eval_cli, [model, tmp_path / "f.h5", "--scores", tmp_path / "s.csv"])
    assert r.exit_code == 0, r.stderr
    # Oracle: the network applied by hand to the normalized clips, errors back in dB.
    mean = lm.normalizer.mean.numpy().reshape(-1)
    std = lm.normalizer.std.numpy().reshape(-1)
    assert mean.size == std.size == 1  # global normalization, the default
    xn = torch.from_numpy(((x - mean) / std).reshape(len(x), -1))
    with torch.no_grad():
        rec = lm.model.decoder(lm.model.encoder(xn))
    err = (rec - xn).numpy() * std
    scores = pd.read_csv(tmp_path / "s.csv")
    assert scores["id"].tolist() == ids
    np.testing.assert_allclose(scores["mse"], (err ** 2).mean(1), rtol=1e-4)


def test_help_shows_the_new_kind_and_its_option(tiny):
    r = invoke(train_cli, ["--help"])
    assert r.exit_code == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "tiny21: a throwaway kind" in text
    assert "--width INTEGER RANGE Hidden width (tiny21). [6]" in text


@pytest.mark.parametrize("args, msg", [
    (["--arch", "tiny21", "--hidden", "7,7"],
     "--hidden: does not apply to model kind 'tiny21' (its config has no hidden)"),
    (["--arch", "tiny21", "--context", "5"], "--context: does not apply to model kind 'tiny21'"),
    (["--arch", "improved", "--width", "5"], "--width: does not apply to model kind 'improved'"),
    (["--arch", "tiny21", "--width", "1"], "Invalid value for '--width': 1 is not in the range x>=2."),
])
def test_an_option_the_kind_does_not_use_is_refused(tmp_path, tiny, args, msg):
    write_features(tmp_path / "f.h5", n=6)
    out = tmp_path / "m.safetensors"
    r = invoke(train_cli, [tmp_path / "f.h5", "-o", out, *args, "--epochs", "1"])
    assert one_error_line(r) == f"ae-train: error: {msg}"
    assert not out.exists() and not (tmp_path / "m.safetensors.ckpt").exists()


def test_the_library_refuses_unused_options_by_parameter(tiny):
    with pytest.raises(InputError) as e:
        S.make_settings(arch=tiny, hidden=(7, 7))
    assert (e.value.param, e.value.message) == (
        "hidden", "does not apply to model kind 'tiny21' (its config has no hidden)")
    with pytest.raises(InputError) as e:
        registry.make_config("improved", SHAPE, width=5)
    assert (e.value.param, str(e.value)) == ("width", "width: does not apply to model kind "
                                             "'improved'")
    with pytest.raises(InputError) as e:
        registry.make_config(tiny, SHAPE, hidden=(7,))
    assert e.value.param == "hidden"
    # None is "not given": the config's default.
    assert registry.make_config(tiny, SHAPE, hidden=None, width=None).width == 6
    with pytest.raises(InputError) as e:
        registry.kind("no-such-kind")
    assert e.value.param == "arch"


def test_registry_is_torch_free_and_finds_the_built_in_kinds():
    code = ("import sys, aekit.train.settings, aekit.models.registry as r; "
            "bad = [m for m in ('torch', 'aekit.models.mlp', 'aekit.models.frames') "
            "if m in sys.modules]; print(bad); "
            "print(sorted(k for k in r.kinds() if k in ('baseline', 'improved', 'frames', "
            "'interp')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["[]", "['baseline', 'frames', 'improved', 'interp']"]
    k = registry.kind("frames")
    assert (k.batch_norm, k.score, dict(k.defaults), k.default("context"), k.uses("hidden")) == (
        True, "mahalanobis", {"batch_size": 512, "lr": 1e-3, "epochs": 20}, 5, True)


def test_an_entry_point_kind_is_found_and_a_broken_one_skipped(tmp_path, monkeypatch, caplog):
    from importlib.metadata import EntryPoint

    write_kind(tmp_path, "tiny21ep", "tiny21epmod")
    monkeypatch.syspath_prepend(str(tmp_path))
    eps = [EntryPoint("tiny21ep", "tiny21epmod", "aekit.models"),
           EntryPoint("broken", "no_such_module_21", "aekit.models")]
    monkeypatch.setattr("importlib.metadata.entry_points",
                        lambda group=None: eps if group == "aekit.models" else [])
    monkeypatch.setattr(registry, "_discovered", False)
    try:
        with caplog.at_level(logging.WARNING, logger="aekit"):
            assert registry.kind("tiny21ep").help == "a throwaway kind"
        assert "entry point broken = no_such_module_21 not loaded" in caplog.text
        assert {"baseline", "improved", "frames", "interp"} <= set(registry.kinds())
    finally:
        registry._REGISTRY.pop("tiny21ep", None)
        sys.modules.pop("tiny21epmod", None)


def test_register_refuses_an_entry_that_cannot_work():
    from dataclasses import dataclass

    @dataclass
    class NoLatent:
        arch: str = "x21"
        input_shape: tuple = (1, 1, 1)

    @dataclass
    class Ok:
        arch: str = "x21"
        input_shape: tuple = (1, 1, 1)
        latent: int = 2
        hidden: tuple = (4,)

    with pytest.raises(ValueError, match="the config has no field latent"):
        registry.register("x21", NoLatent, NoLatent)
    with pytest.raises(ValueError, match="option 'context' is not a field of its config"):
        registry.register("x21", Ok, Ok, options={"context": registry.ModelOption("?")})
    with pytest.raises(ValueError, match="'hidden' is a field of its config"):
        registry.register("x21", Ok, Ok, defaults={"hidden": (8,)})
    with pytest.raises(ValueError, match="'hidden' is a setting of every kind"):
        registry.register("x21", Ok, Ok, options={"hidden": registry.ModelOption("?")})
    assert "x21" not in registry.kinds()


def test_a_kind_option_named_like_a_command_option_is_one_error_line(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class Clash:
        arch: str = "clash21"
        input_shape: tuple = (1, 1, 1)
        latent: int = 2
        seed: int = 3

    registry.register("clash21", Clash, Clash, options={"seed": registry.ModelOption("?")})
    try:
        r = invoke(train_cli, [tmp_path / "f.h5", "-o", tmp_path / "m.safetensors"])
        assert one_error_line(r) == (
            "ae-train: error: a model kind's own option is named like an ae-train option "
            "(seed): rename it in its register call")
    finally:
        registry._REGISTRY.pop("clash21", None)
    r = invoke(train_cli, ["--help"])  # the command works again without it
    assert r.exit_code == 0 and "--seed" in r.stdout


def test_register_refuses_a_config_no_model_file_could_hold():
    """A kind whose defaults the model file's check would refuse (an integer field below 1, a
    field without a default) is refused when registered, not after training."""
    from dataclasses import dataclass

    @dataclass
    class Offset:
        arch: str = "x21"
        input_shape: tuple = (1, 1, 1)
        latent: int = 2
        offset: int = 0

    @dataclass
    class NoDefault:
        width: int
        arch: str = "x21"
        input_shape: tuple = (1, 1, 1)
        latent: int = 2

    with pytest.raises(ValueError, match="config field offset defaults to 0"):
        registry.register("x21", Offset, Offset)
    with pytest.raises(ValueError, match="config field width needs a default"):
        registry.register("x21", NoDefault, NoDefault)
    assert "x21" not in registry.kinds()
