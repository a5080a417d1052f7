"""The per-type results table across several ae-eval reports (``ae-table``).

Each model (a *label*: an architecture, a scorer, a run) contributes one or more ae-eval JSON
reports, typically one per machine type. The table has a row per machine type and machine id
(section), a column group per label, the type's mean, and the means over all machine types;
with the DCASE 2021-2025 protocols also the official score.

Two report shapes, never mixed in one table:

- **dcase2020** (``ae-eval --anomaly-column COL --group-by machine``): the ``anomaly`` section's
  ``groups`` (AUC, official pAUC per machine id). Columns AUC, pAUC. A type's row ``mean`` is
  the arithmetic mean over its ids; ``all types`` rows are the arithmetic and harmonic means
  of the type means (as the DCASE 2020 results tables give them). The machine type of a group
  is the part before ``_id_`` of its name (``fan_id_00``, the ``machine`` column of
  ``ae-labels --preset dcase2020``), else the ``TYPE`` of the report's file name
  ``LABEL.TYPE.json``.
- **dcase2021** ... **dcase2025** (``ae-eval --protocol dcaseYYYY``): the ``dcase`` section.
  Columns AUC (source), AUC (target), pAUC (2021: AUC and pAUC per domain) and the official
  score. A type's row ``mean`` is the report's arithmetic mean over its sections and its
  official score (:func:`aekit.evaluate.dcase.dcase_results`); ``all types`` rows are the arithmetic
  and harmonic means over all machine types and sections of each column and the official
  score over them all, computed as ``dcase_results`` computes them over one report holding
  every type (the same means, ``aekit.evaluate.dcase``).

Every label must cover the same machine types and ids (sections), with the same protocol and
``max_fpr``: a table whose columns average different rows would compare unlike numbers, so a
difference is refused (:class:`~aekit.errors.InputError`), as are reports of an unknown format
version. A value ae-eval could not compute (``null``) is ``None`` in the table ("n/a"), and any
mean over it is ``None`` too.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from aekit.evaluate.dcase import PROTOCOLS, _amean, _hmean
from aekit.errors import InputError, preview

SHAPE_2020 = "dcase2020"

_TITLES = {"auc": "AUC", "pauc": "pAUC", "auc_source": "AUC (source)",
           "auc_target": "AUC (target)", "pauc_source": "pAUC (source)",
           "pauc_target": "pAUC (target)", "official_score": "official score"}
_LABEL = re.compile(r"[^|\r\n\t]+")


@dataclass
class Table:
    """The table as data: ``rows`` are (machine type, id/section, {label: {column: value}}),
    ``kind`` one of "row", "mean", "all" (how the row is printed)."""

    protocol: str
    max_fpr: float
    labels: list[str]
    columns: list[str]
    rows: list[tuple[str, str, str, dict]] = field(default_factory=list)
    key: str = ""  # the key column's title, for a registered section's table

    @property
    def key_title(self) -> str:
        return self.key or ("id" if self.protocol == SHAPE_2020 else "section")


# --------------------------------------------------------------------------- inputs

def parse_inputs(args: Sequence[str]) -> list[tuple[str | None, str]]:
    """``NAME=PATH`` or ``PATH`` arguments -> (label or None, path). An argument that names
    an existing file is a path even when it holds '='."""
    out = []
    for a in args:
        if a == "":
            raise InputError("empty path: name a report file ('-' for stdin)")
        if "=" in a and not os.path.exists(a):
            name, path = a.split("=", 1)
            if not path:
                raise InputError(f"{a!r}: NAME=PATH needs a path after '='")
            check_label(name, a)
            out.append((name, path))
        else:
            out.append((None, a))
    return out


def check_label(name: str, where: str) -> None:
    if not _LABEL.fullmatch(name) or name != name.strip():
        raise InputError(f"{where!r}: a label must be non-empty text without '|', tabs, line "
                         "breaks or surrounding spaces")


def default_label(path: str, report: dict) -> str:
    """``LABEL`` of a file named ``LABEL.TYPE.json``; else the report's model architecture
    and scorer, ``ARCH-SCORE`` (e.g. frames-mse)."""
    parts = Path(path).name.split(".")
    if len(parts) >= 3 and parts[-1] == "json" and parts[0]:
        return parts[0]
    model = report.get("model") if isinstance(report.get("model"), dict) else {}
    arch = model.get("arch")
    if not isinstance(arch, str) or not arch:
        raise InputError(f"{path}: no label: name the file LABEL.TYPE.json or give NAME={path}")
    score = (report.get("anomaly") or {}).get("score") if isinstance(report.get("anomaly"),
                                                                      dict) else None
    return f"{arch}-{score}" if isinstance(score, str) and score else arch


def load_report(path: str) -> dict:
    """One ae-eval report ('-' = stdin); InputError for anything else or a version this aekit
    does not know (:func:`aekit.evaluate.reports.load_reports`)."""
    from aekit.evaluate.reports import load_reports

    return load_reports([path], check_version=True)[0]


def _num(v, where: str) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not 0.0 <= v <= 1.0:
        raise InputError(f"{where}: {v!r} is not a metric in [0, 1]")
    return float(v)


def _dict(v, where: str) -> dict:
    if not isinstance(v, dict) or not v:
        raise InputError(f"{where}: missing or empty; not a complete ae-eval report")
    return v


def _rows_2020(path: str, rep: dict) -> tuple[tuple, dict]:
    """{(type, id): {auc, pauc}} of the 'anomaly' section's groups."""
    a = rep["anomaly"]
    groups = _dict(a.get("groups"), f"{path}: anomaly.groups")
    parts = Path(path).name.split(".")
    file_type = parts[-2] if len(parts) >= 3 and parts[-1] == "json" else None
    out: dict = {}
    for name, g in groups.items():
        g = _dict(g, f"{path}: anomaly.groups.{name}")
        if "_id_" in name:
            mtype, mid = name.rsplit("_id_", 1)
        elif file_type:
            mtype, mid = file_type, name
        else:
            raise InputError(f"{path}: cannot tell the machine type of group {name!r}: name "
                             "the groups TYPE_id_NN (ae-labels' machine column) or the file "
                             "LABEL.TYPE.json")
        out[(mtype, mid)] = {c: _num(g.get(c), f"{path}: anomaly.groups.{name}.{c}")
                             for c in ("auc", "pauc")}
    return (SHAPE_2020, _fpr(a.get("max_fpr"), path)), out


def _rows_dcase(path: str, rep: dict) -> tuple[tuple, dict]:
    """{(type, section): {metric: value}} of the 'dcase' section."""
    d = rep["dcase"]
    if not isinstance(d, dict) or d.get("protocol") not in PROTOCOLS:
        raise InputError(f"{path}: dcase.protocol must be one of {', '.join(PROTOCOLS)}")
    cols = _metric_columns(d["protocol"])
    out: dict = {}
    for mtype, t in _dict(d.get("machine_types"), f"{path}: dcase.machine_types").items():
        secs = _dict(_dict(t, f"{path}: dcase.machine_types.{mtype}").get("sections"),
                     f"{path}: dcase.machine_types.{mtype}.sections")
        for sec, r in secs.items():
            r = _dict(r, f"{path}: dcase.machine_types.{mtype}.sections.{sec}")
            out[(mtype, sec)] = {c: _num(r.get(c), f"{path}: {mtype} section {sec} {c}")
                                 for c in cols}
            if any(v is None for v in out[(mtype, sec)].values()):
                raise InputError(f"{path}: {mtype} section {sec}: a metric is missing")
    return (d["protocol"], _fpr(d.get("max_fpr"), path)), out


def _fpr(v, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise InputError(f"{path}: max_fpr {v!r} is not in (0, 1]")
    return float(v)


def _metric_columns(protocol: str) -> list[str]:
    if protocol == SHAPE_2020:
        return ["auc", "pauc"]
    if protocol == "dcase2021":
        return ["auc_source", "pauc_source", "auc_target", "pauc_target"]
    return ["auc_source", "auc_target", "pauc"]


def report_rows(path: str, rep: dict, section: str | None = None) -> tuple[tuple, dict]:
    """((protocol, max_fpr), {(type, id or section): {column: value}}) of one report: its
    'dcase' section when present, else its 'anomaly' groups; with ``section``, the rows that
    section's registry entry gives (``MetricSection.table``), as ((section, None), rows)."""
    if section is not None:
        return (section, None), _rows_section(path, rep, section)
    if isinstance(rep.get("dcase"), dict):
        return _rows_dcase(path, rep)
    if isinstance(rep.get("anomaly"), dict) and rep["anomaly"].get("groups") is not None:
        return _rows_2020(path, rep)
    raise InputError(f"{path}: no per-machine numbers: make the report with ae-eval's anomaly "
                     "column grouped by machine (DCASE 2020) or a dcaseYYYY protocol "
                     "(2021-2025)")


def table_entry(section: str):
    from aekit.evaluate.sections import get, registered

    entry = get(section)
    if entry is None or entry.table is None:
        shown = [s.name for s in registered() if s.table is not None]
        raise InputError(f"no metric section {section!r} with table rows is registered"
                         + (f" (those with: {', '.join(shown)})" if shown else ""),
                         param="section")
    return entry


def _rows_section(path: str, rep: dict, section: str) -> dict:
    """{(type, key): {column: value}} of a registered section, every value checked."""
    entry = table_entry(section)
    sec = rep.get(section)
    if not isinstance(sec, dict):
        raise InputError(f"{path}: no '{section}' section; not made with it registered")
    parts = Path(path).name.split(".")
    rows = entry.table(sec, parts[-2] if len(parts) >= 3 and parts[-1] == "json" else None)
    if not isinstance(rows, dict) or not rows:
        raise InputError(f"{path}: the '{section}' section gives no table rows")
    columns = None
    for key, row in rows.items():
        where = f"{path}: {section} {key!r}"
        if (not isinstance(key, tuple) or len(key) != 2 or not all(isinstance(k, str) for k in key)
                or not isinstance(row, dict) or not row):
            raise InputError(f"{where}: a table row must be (type, key): {{column: value}}")
        columns = columns or list(row)
        if list(row) != columns:
            raise InputError(f"{where}: columns {list(row)} differ from {columns}")
        for c, v in row.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise InputError(f"{where} {c}: {v!r} is not a finite number")
    return {k: {c: (None if v is None else float(v)) for c, v in r.items()}
            for k, r in rows.items()}


# --------------------------------------------------------------------------- the table

def build_table(inputs: Sequence[tuple[str | None, str, dict]],
                section: str | None = None) -> Table:
    """(label or None, path, report) -> the :class:`Table`. InputError for mixed protocols,
    one label given one machine type twice, or labels covering different rows. ``section``:
    the table of that registered metric section (``MetricSection.table``) instead of the
    DCASE ones: a type's mean over its keys, the arithmetic mean over the type means."""
    if not inputs:
        raise InputError("no reports")
    proto_of: dict[tuple, str] = {}
    data: dict[str, dict] = {}  # label -> {(type, key): {col: value}}
    src: dict[tuple, str] = {}  # (label, type) -> path
    for label, path, rep in inputs:
        label = label if label is not None else default_label(path, rep)
        check_label(label, path)
        proto, rows = report_rows(path, rep, section)
        proto_of.setdefault(proto, path)
        if len(proto_of) > 1:
            (p1, f1), (p2, f2) = list(proto_of.items())[:2]
            raise InputError(f"mixed protocols: {f1} is {_proto_name(p1)}, {f2} is "
                             f"{_proto_name(p2)}; one table holds one protocol")
        for mtype in dict.fromkeys(t for t, _ in rows):
            if (label, mtype) in src:
                raise InputError(f"{src[(label, mtype)]} and {path} both give {label} on "
                                 f"{mtype}: label them apart (NAME=PATH)")
            src[(label, mtype)] = path
        data.setdefault(label, {}).update(rows)
    protocol, max_fpr = next(iter(proto_of))
    labels = list(data)
    ref = labels[0]
    key_title = table_entry(section).table_key if section else _key_title(protocol)
    for lab in labels[1:]:
        missing = [k for k in data[ref] if k not in data[lab]]
        extra = [k for k in data[lab] if k not in data[ref]]
        if missing or extra:
            what = (f"lacks {preview(' '.join(k) for k in missing)}" if missing else
                    f"has {preview(' '.join(k) for k in extra)} that {ref} lacks")
            raise InputError(f"{lab} {what} ({key_title}s differ from {ref}'s): "
                             "every model must cover the same machine types and "
                             f"{key_title}s")
    if section:
        metric = list(next(iter(data[ref].values())))
        for lab in labels:
            other = list(next(iter(data[lab].values())))
            if other != metric:
                raise InputError(f"{lab}'s {section} columns {other} differ from {ref}'s "
                                 f"{metric}")
        return _section_table(section, labels, metric, data, key_title)
    metric = _metric_columns(protocol)
    columns = metric + ([] if protocol == SHAPE_2020 else ["official_score"])
    table = Table(protocol, max_fpr, labels, columns)
    types = sorted(dict.fromkeys(t for t, _ in data[ref]))
    for mtype in types:
        keys = sorted(k for t, k in data[ref] if t == mtype)
        for k in keys:
            table.rows.append(("row", mtype, k, {lab: dict(data[lab][(mtype, k)])
                                                 for lab in labels}))
        table.rows.append(("mean", mtype, "mean", {
            lab: _type_mean([data[lab][(mtype, k)] for k in keys], metric, protocol)
            for lab in labels}))
    if protocol == SHAPE_2020:  # over the type means
        for name, fn in (("arithmetic mean", _amean), ("harmonic mean", _hmean)):
            cells = {}
            for lab in labels:
                means = [r[3][lab] for r in table.rows if r[0] == "mean"]
                cells[lab] = {c: _over([m[c] for m in means], fn) for c in metric}
            table.rows.append(("all", "all types", name, cells))
    else:  # over every type and section, as aekit.evaluate.dcase over one report of all types
        for name, fn in (("arithmetic mean", _amean), ("harmonic mean", _hmean)):
            table.rows.append(("all", "all types", name, {
                lab: {c: _over([v[c] for v in data[lab].values()], fn) for c in metric}
                for lab in labels}))
        table.rows.append(("all", "all types", "official score", {
            lab: {"official_score": _over([v[c] for v in data[lab].values() for c in metric],
                                          _hmean)} for lab in labels}))
    return table


def _section_table(section: str, labels: list, metric: list, data: dict, key: str) -> Table:
    """A registered section's table: its rows, each type's arithmetic mean over its keys, and
    the arithmetic mean of the type means."""
    table = Table(section, None, labels, metric, key=key)
    ref = labels[0]
    for mtype in sorted(dict.fromkeys(t for t, _ in data[ref])):
        keys = sorted(k for t, k in data[ref] if t == mtype)
        for k in keys:
            table.rows.append(("row", mtype, k, {lab: dict(data[lab][(mtype, k)])
                                                 for lab in labels}))
        table.rows.append(("mean", mtype, "mean", {
            lab: {c: _over([data[lab][(mtype, k)][c] for k in keys], _amean) for c in metric}
            for lab in labels}))
    means = [r for r in table.rows if r[0] == "mean"]
    table.rows.append(("all", "all types", "arithmetic mean", {
        lab: {c: _over([m[3][lab][c] for m in means], _amean) for c in metric}
        for lab in labels}))
    return table


def _over(values: list, fn) -> float | None:
    return None if not values or any(v is None for v in values) else fn(values)


def _type_mean(rows: list[dict], metric: list[str], protocol: str) -> dict:
    out = {c: _over([r[c] for r in rows], _amean) for c in metric}
    if protocol != SHAPE_2020:  # aekit.evaluate.dcase: the official score's rule on this type alone
        out["official_score"] = _over([r[c] for r in rows for c in metric], _hmean)
    return out


def _key_title(protocol: str) -> str:
    return "id" if protocol == SHAPE_2020 else "section"


def _proto_name(p: tuple) -> str:
    name = ("DCASE 2020 (per machine id)" if p[0] == SHAPE_2020 else f"{p[0]} (protocol)")
    return f"{name} with max_fpr {p[1]:g}"


def table_from_files(args: Sequence[str], section: str | None = None) -> Table:
    """ae-table as a function: ``NAME=PATH`` or ``PATH`` arguments -> the :class:`Table`."""
    parsed = parse_inputs(args)
    return build_table([(label, path, load_report(path)) for label, path in parsed], section)


# --------------------------------------------------------------------------- formats

def header(table: Table) -> list[str]:
    return ["machine type", table.key_title] + [
        f"{lab} {_TITLES.get(c, c)}" for lab in table.labels for c in table.columns]


def _cells(table: Table, row: tuple, fmt) -> list[str]:
    return [fmt(row[3][lab].get(c), c in row[3][lab]) for lab in table.labels
            for c in table.columns]


def to_markdown(table: Table) -> str:
    """Three decimals; 'n/a' where a value could not be computed; an empty cell where the
    column has no value on that row (the official score of one section); type means and
    the rows over all types in bold."""
    def fmt(v, present):
        return "" if not present else ("n/a" if v is None else f"{v:.3f}")

    head = header(table)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = _cells(table, row, fmt)
        kind, mtype, key = row[0], _md(row[1]), _md(row[2])
        if kind == "row":
            lines.append(f"| {mtype} | {key} | " + " | ".join(cells) + " |")
        else:
            bold = [f"**{c}**" if c and kind == "mean" else c for c in cells]
            lines.append(f"| **{mtype}** | {key} | " + " | ".join(bold) + " |")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    """A machine type or section name as a Markdown cell: '|' escaped, line breaks as spaces."""
    return " ".join(str(text).replace("|", "\\|").split())


def to_csv(table: Table) -> str:
    """The same table as CSV: full precision (Python's repr of each float), 'n/a' and
    absent values as empty cells."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header(table))
    for row in table.rows:
        w.writerow([row[1], row[2]] + _cells(table, row, lambda v, p: "" if v is None
                                             else repr(v)))
    return buf.getvalue()
