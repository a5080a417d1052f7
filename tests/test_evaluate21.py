"""Issue 21, evaluation part: the shared skip/fail policy and CSV dialect (one library module
each), the evaluate package free of import cycles, the report readers' one check."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from aekit.errors import DataError, InputError

LIB = Path(__file__).resolve().parent.parent / "lib"


def test_fail_policy_skip_then_threshold():
    from aekit.system.failpolicy import FailPolicy

    p = FailPolicy("skip", 0.25)
    p.failure("a.wav", "cannot decode")  # recorded, not raised
    assert p.failed == 1
    p.check(4)  # 1 of 4 = 25%: not over
    p.failure("b.wav", "missing")
    with pytest.raises(DataError) as e:
        p.check(4, "; no output written")
    assert e.value.param == "max_fail_frac"
    assert str(e.value) == "max_fail_frac: 2 of 4 inputs failed (50.0% > 0.25); no output written"
    p.check(0)  # nothing read: nothing to judge


def test_fail_policy_fail_stops_at_first_and_checks_its_settings():
    from aekit.system.failpolicy import FailPolicy

    with pytest.raises(DataError) as e:
        FailPolicy("fail").failure("a.wav", "cannot decode", "; no output written")
    assert str(e.value) == ("on_error: a.wav: cannot decode (stopped at the first failed "
                            "input); no output written")
    for kw, param in (({"on_error": "ignore"}, "on_error"), ({"max_fail_frac": 1.5}, "max_fail_frac"),
                      ({"max_fail_frac": float("nan")}, "max_fail_frac"),
                      ({"max_fail_frac": True}, "max_fail_frac")):
        with pytest.raises(InputError) as e:
            FailPolicy(**kw)
        assert e.value.param == param


def test_featurize_uses_the_policy(tmp_path):
    from aekit.data.ingest import featurize
    from aekit.audio.features import MelParams

    with pytest.raises(InputError) as e:
        featurize([], [], tmp_path / "f.h5", MelParams(), max_fail_frac=2.0)
    assert e.value.param == "max_fail_frac" and not (tmp_path / "f.h5").exists()


def test_csv_dialect_one_definition():
    from aekit.system.csvout import csv_field, csv_line, write_frame

    assert csv_line(["id", "a,b", 'say "hi"', "two\nlines", "cr\r", 1.5]) == \
        'id,"a,b","say ""hi""","two\nlines","cr\r",1.5\n'
    assert csv_field("x\udcff.wav") == "x\\xff.wav"  # a non-UTF-8 file name, readable text
    buf = io.StringIO()
    write_frame(pd.DataFrame({"id": ["a,b", "c"], "score": [0.123456789, 2.0]}), buf,
                float_format="%.3g")
    assert buf.getvalue() == 'id,score\n"a,b",0.123\nc,2\n'
    # what csv_line writes, pandas reads back as written
    back = pd.read_csv(io.StringIO(csv_line(["id", "p"]) + csv_line(['q"x,y', "two\nlines"])))
    assert back.to_dict("list") == {"id": ['q"x,y'], "p": ["two\nlines"]}


def _imports(path: Path, pkg: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(pkg):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith(pkg))
    return out


def test_evaluate_package_has_no_import_cycle():
    """Every import, function-level ones included: no module of aekit.evaluate reaches itself."""
    mods = {f"aekit.evaluate.{p.stem}": p for p in (LIB / "evaluate").glob("*.py")
            if p.stem != "__init__"}
    mods["aekit.models.modelfile"] = LIB / "models" / "modelfile.py"
    graph = {m: {d for d in _imports(p, "aekit.") if d in mods and d != m}
             for m, p in mods.items()}

    def reaches(start):
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    cyclic = sorted(m for m in mods if m in reaches(m))
    assert cyclic == []
    big = {p.name: n for p in (LIB / "evaluate").glob("*.py")
           if (n := len(p.read_text().splitlines())) > 500}
    assert big == {}


def test_table_reader_and_summarize_share_one_check(tmp_path):
    from aekit.evaluate import reports, tables

    (tmp_path / "old.json").write_text(json.dumps({"format": "aekit-eval", "format_version": 9}))
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(InputError, match="format_version 9 is not known"):
        tables.load_report(str(tmp_path / "old.json"))
    with pytest.raises(InputError, match="not an ae-eval report"):
        tables.load_report(str(tmp_path / "other.json"))
    calls = []
    real = reports.load_reports
    try:
        reports.load_reports = lambda paths, **kw: calls.append((list(paths), kw)) or [{}]
        assert tables.load_report("x.json") == {}
    finally:
        reports.load_reports = real
    assert calls == [(["x.json"], {"check_version": True})]
