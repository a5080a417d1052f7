"""Parameter errors: the library names a parameter (``param=``), a command shows its own flag."""

from __future__ import annotations

import multiprocessing as mp
import pickle

import click
import pytest

from aekit.cmds import common
from aekit.errors import DataError, InputError
from conftest import invoke, one_error_line


def _raising(exc):
    @common.command("ae-probe")
    @click.option("--batch-size", "batch_size", type=int, default=1)
    @click.argument("features", required=False)
    def cli(batch_size, features):
        raise exc

    return cli


def test_library_message_names_the_parameter_not_a_flag():
    err = InputError("must be at least 2", param="batch_size")
    assert str(err) == "batch_size: must be at least 2"
    assert (err.message, err.param) == ("must be at least 2", "batch_size")
    assert str(DataError("no clips left")) == "no clips left"


@pytest.mark.parametrize("param, shown", [
    ("batch_size", "--batch-size: must be at least 2"),  # an option: its flag
    ("features", "FEATURES: must be at least 2"),  # an argument: its metavar
    ("hidden", "hidden: must be at least 2"),  # not a parameter of this command: as is
    (None, "must be at least 2"),
])
def test_command_shows_its_own_flag(param, shown):
    r = invoke(_raising(InputError("must be at least 2", param=param)), [])
    assert one_error_line(r, 2) == f"ae-probe: error: {shown}"


def test_data_error_keeps_exit_1_and_the_flag():
    r = invoke(_raising(DataError("loss is NaN", param="batch_size")), [])
    assert one_error_line(r, 1) == "ae-probe: error: --batch-size: loss is NaN"


def _raise_in_worker(_):
    raise InputError("bad value", param="n_fft")


def test_param_survives_pickling_and_worker_processes():
    err = pickle.loads(pickle.dumps(InputError("bad value", param="n_fft")))
    assert (str(err), err.param) == ("n_fft: bad value", "n_fft")
    with mp.get_context("spawn").Pool(1) as pool:
        with pytest.raises(InputError) as info:
            pool.map(_raise_in_worker, [0])
    assert (info.value.param, info.value.message) == ("n_fft", "bad value")
