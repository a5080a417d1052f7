"""aekit.data.expr: the --where language runs nothing a user writes, and selects the right rows.

Every attack is refused at parse time with an InputError naming the refused construct; the
normal expressions are compared with masks computed by hand (plain Python over the rows).
"""

from __future__ import annotations

import subprocess

import numpy as np
import pandas as pd
import pytest

from aekit.errors import InputError
from aekit.data.expr import MAX_DEPTH, MAX_LENGTH, parse_where
from aekit.data.selection import query_rows
from conftest import exe


@pytest.fixture
def labels():
    return pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f"],
        "anomaly": [0, 1, 0, 1, 0, 0],
        "machine": ["fan", "fan", "pump", "pump", "valve", None],
        "level": [0.5, -1.0, 2.0, 3.5, -0.25, 1.0],
    })


ATTACKS = [
    # (expression, words the message must contain)
    ("anomaly.to_csv('/tmp/x') != 1", "function calls"),
    ("machine.str.replace('a', 'b') == 'x'", "function calls"),
    ("machine.str == 'x'", "attribute access"),
    ("anomaly.__class__ == 1", "attribute access"),
    ("__import__('os').system('touch /tmp/pwned') == 0", "function calls"),
    ("open('/etc/passwd') == 1", "function calls"),
    ("len(machine) > 0", "function calls"),
    ("__builtins__ == 1", "'__builtins__'"),
    ("__class__ == 1", "'__class__'"),
    ("@anomaly == 1", "'@'"),
    ("anomaly == @x", "'@'"),
    ("`anomaly` == 1", "backticks"),
    ("(lambda: 1)() == 1", "function calls"),
    ("(lambda x: x) == 1", "lambda"),
    ("[x for x in machine] == 1", "comprehensions"),
    ("anomaly in [x for x in (1, 2)]", "'in' with anything but a list of literals"),
    ("anomaly in {1: 2}", "'in' with anything but a list of literals"),
    ("machine[0] == 'f'", "subscripts"),
    ("anomaly == {1, 2}", "sets"),
    ("anomaly + 1 == 2", "arithmetic"),
    ("anomaly & 1", "arithmetic and bitwise"),
    ("(anomaly := 1) == 1", "assignment expressions"),
    ("f'{anomaly}' == '1'", "f-strings"),
    ("anomaly == (1 if True else 2)", "conditional expressions"),
    ("anomaly in [open('x')]", "lists of anything but literals"),
    ("not anomaly.to_csv('x')", "function calls"),
    ("not anomaly.values", "attribute access"),
    ("anomaly == 1 and (machine == 'fan' or level.__class__ == 1)", "attribute access"),
    ("anomaly == ~1", "unary operator"),
    ("anomaly == b'1'", "literal b'1'"),
    ("anomaly == ...", "literal Ellipsis"),
    ("anomaly == 1; import os", "syntax error"),
    ("import os", "syntax error"),
]


@pytest.mark.parametrize("text,words", ATTACKS, ids=[a for a, _ in ATTACKS])
def test_attacks_are_refused_naming_the_construct(text, words, labels, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as err:
        query_rows(labels, text)
    msg = str(err.value)
    assert msg.startswith("where: bad expression") and err.value.param == "where", msg
    assert words in msg, msg
    assert "\n" not in msg
    assert list(tmp_path.iterdir()) == []  # nothing was run


def test_refused_at_parse_time_before_any_data():
    """The checks are on the tree: no DataFrame is ever touched by a refused expression."""
    for text, _ in ATTACKS:
        with pytest.raises(InputError):
            parse_where(text)


def test_deeply_nested_input_is_refused_cleanly():
    nested_and = "anomaly == 1"
    for _ in range(MAX_DEPTH + 5):
        nested_and = f"(level > 0 and {nested_and})"
    for text in (nested_and,
                 "not " * (MAX_DEPTH + 5) + "anomaly == 1",
                 "(" * 1000 + "anomaly == 1" + ")" * 1000,  # beyond Python's own parser limit
                 "(" * 5000 + "1" + ")" * 5000):
        with pytest.raises(InputError, match="too deeply nested|syntax error|longer than"):
            parse_where(text)


def test_redundant_parentheses_are_harmless(labels):
    text = "(" * 150 + "anomaly == 1" + ")" * 150  # no deeper tree, so allowed
    np.testing.assert_array_equal(query_rows(labels, text), labels["anomaly"].to_numpy() == 1)


def test_long_input_is_refused():
    text = " or ".join(["anomaly == 1"] * (MAX_LENGTH // 10))
    assert len(text) > MAX_LENGTH
    with pytest.raises(InputError, match=f"longer than {MAX_LENGTH}"):
        parse_where(text)


def test_empty_and_bare_columns_are_refused(labels):
    for text in ("", "   "):
        with pytest.raises(InputError, match="empty"):
            parse_where(text)
    with pytest.raises(InputError, match="condition"):
        query_rows(labels, "machine")
    with pytest.raises(InputError, match="unknown column"):
        query_rows(labels, "nosuch == 1")


def _rows(labels):
    """Plain Python rows; a missing cell (None or NaN, by pandas version) becomes None."""
    return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in r.items()}
            for r in labels.to_dict("records")]


def _hand(labels, pred):
    return np.array([bool(pred(r)) for r in _rows(labels)])


NORMAL = [
    ("anomaly == 0", lambda r: r["anomaly"] == 0),
    ("anomaly != 0", lambda r: r["anomaly"] != 0),
    ("machine == 'fan'", lambda r: r["machine"] == "fan"),
    ("'pump' == machine", lambda r: r["machine"] == "pump"),
    ("machine in ['fan', 'valve']", lambda r: r["machine"] in ("fan", "valve")),
    ("machine not in ('fan',)", lambda r: r["machine"] != "fan"),
    ("level > 0.75", lambda r: r["level"] > 0.75),
    ("level <= -0.25", lambda r: r["level"] <= -0.25),
    ("0 < level <= 2", lambda r: 0 < r["level"] <= 2),
    ("anomaly == 0 and level > 0", lambda r: r["anomaly"] == 0 and r["level"] > 0),
    ("anomaly == 1 or machine == 'valve'", lambda r: r["anomaly"] == 1 or r["machine"] == "valve"),
    ("not (anomaly == 1 or machine == 'valve')",
     lambda r: not (r["anomaly"] == 1 or r["machine"] == "valve")),
    ("machine == None", lambda r: r["machine"] is None),
    ("machine != None and anomaly == 0", lambda r: r["machine"] is not None and r["anomaly"] == 0),
    ("machine in ['pump', None]", lambda r: r["machine"] in ("pump", None)),
    ("machine == 'f@n'", lambda r: r["machine"] == "f@n"),  # '@' inside a string is text
    ("True", lambda r: True),
    ("anomaly == -1 or level == -1.0", lambda r: r["anomaly"] == -1 or r["level"] == -1.0),
]


@pytest.mark.parametrize("text,pred", NORMAL, ids=[t for t, _ in NORMAL])
def test_normal_expressions_match_a_hand_computed_mask(text, pred, labels):
    got = query_rows(labels, text)
    assert got.dtype == bool and got.shape == (len(labels),)
    np.testing.assert_array_equal(got, _hand(labels, pred))


def test_text_column_against_a_number_is_a_clear_error(labels):
    with pytest.raises(InputError, match="holds text"):
        query_rows(labels, "machine > 3")


def test_cli_refuses_an_attack_and_writes_nothing(tmp_path):
    """ae-train --where "anomaly.to_csv('X') != 1": exit 2, one line, no file X."""
    target = tmp_path / "X"
    (tmp_path / "labels.csv").write_text("id,anomaly\na,0\n")
    # No features file: the expression is refused while parsing, before any input is read.
    p = subprocess.run([exe("ae-train"), "feats.h5", "--labels", "labels.csv",
                        "--where", f"anomaly.to_csv('{target}') != 1", "-o", "m.safetensors"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert not target.exists()
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ae-train: error: --where: bad expression"), p.stderr
    assert "function calls not allowed" in lines[0]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("command", ["ae-eval", "ae-encode"])
def test_eval_and_encode_refuse_a_bad_where_before_reading_inputs(tmp_path, command):
    """--where is parsed with the command line (common.where_option): the inputs here are not
    a model or a features file, so reading them first would give another error."""
    for name in ("m.safetensors", "f.h5"):
        (tmp_path / name).write_bytes(b"not read")
    (tmp_path / "labels.csv").write_text("id,anomaly\na,0\n")
    p = subprocess.run([exe(command), "m.safetensors", "f.h5", "--labels", "labels.csv",
                        "--where", "anomaly.to_csv('X') != 1", "-o", "out.h5"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: error: --where: bad expression"), p.stderr
    assert not (tmp_path / "X").exists() and not (tmp_path / "out.h5").exists()
