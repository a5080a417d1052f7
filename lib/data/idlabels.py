"""Label columns parsed from clip ids: the DCASE file-name layouts, or any regular expression.

Public machine-sound data sets put their labels in the file names. A features file's ids are
the files' paths relative to the inputs' common root, without extension, so the labels can be
read back from the ids alone:

- ``dcase2020`` (DCASE 2020 Task 2, MIMII/ToyADMOS as released there)::

      {machine_type}/{split}/{label}_id_{machine_id}_{clip}     fan/train/normal_id_00_00000000

  The evaluation set's test files carry no label (``fan/test/id_05_00000000``).

- ``dcase2021`` (DCASE 2021 to 2025; ``dcase2022`` ... ``dcase2025`` are other names for it,
  :data:`ALIASES`)::

      {machine_type}/{split}/section_{section}_{domain}_{split}_{label}_{clip}[_{attributes}]
      bearing/train/section_00_source_train_normal_0000_vel_6_loc_A

  The evaluation set's test files carry no label (``section_03_source_test_0000``), from 2022
  on not even domain and split (``section_03_0000``). DCASE 2021 as released keeps its test
  files in ``source_test/`` and ``target_test/`` folders: read as ``test``, the folder giving
  the domain (a name of the other domain there does not match). The attributes are what follows the clip
  number: none (2021), ``key_value`` pairs (``vel_6_loc_A``, ``f-n_A``) or a single word
  (``noAttribute``, which stays in ``attributes`` only).

A preset is matched at the END of the id: any leading directories (``dev_data/``) are
allowed, since where a tree was featurized from decides them. Both presets give the columns
``machine_type``, ``split`` (train/test), ``label`` (normal/anomaly) and ``anomaly`` (0/1), plus
``machine``: one machine's key across machine types (``fan_id_00``, ``fan_section_00``), since
``machine_id`` 00 of a fan and of a pump are two machines. A test file without a label gets
an empty ``label`` and ``anomaly``; a train file always has one.

Every value is text as written in the id (machine id ``00`` stays ``00``), except ``anomaly``
(``0``/``1``/empty). A user pattern is a Python regular expression (searched in the id)
whose named groups become the columns; it is data, never code, and is refused above
:data:`MAX_PATTERN_LENGTH` characters. It runs on the ``regex`` module (the syntax of
:mod:`re`) with a time limit, since a backtracking pattern such as ``(a+)+$`` can take
hours on one id: a match that takes more than :data:`MATCH_TIMEOUT` seconds, or all
matches together more than :data:`TOTAL_MATCH_TIMEOUT`, is an InputError naming the id.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from aekit.errors import InputError, preview

MAX_PATTERN_LENGTH = 1000  # characters: a file-name layout, not a program
MATCH_TIMEOUT = 1.0  # seconds for one id: a file-name layout matches in microseconds
TOTAL_MATCH_TIMEOUT = 60.0  # seconds for all the ids together
LABEL_VALUES = {"normal": "0", "anomaly": "1"}


@dataclass(frozen=True)
class Parser:
    """How ids become columns: ``parse(id)`` gives the column values, or None for no match."""

    name: str                # preset name, or "pattern"
    template: str            # the layout in words, for help and error messages
    regex: re.Pattern
    columns: tuple[str, ...]
    derive: Callable[[dict], dict | None] | None = None   # preset: groups -> row, or None
    fullmatch: bool = True   # presets match the whole id; a user pattern is searched
    timeout: float | None = None  # seconds one match may take (a user pattern: regex module)

    def parse(self, id_: str, timeout: float | None = None) -> dict | None:
        """The columns of one id, or None. ``timeout`` (seconds, for a user pattern: at most
        its own) bounds the match: over it, InputError."""
        if self.timeout is None:
            m = self.regex.fullmatch(id_) if self.fullmatch else self.regex.search(id_)
        else:
            limit = self.timeout if timeout is None else min(self.timeout, timeout)
            try:
                m = self.regex.search(id_, timeout=max(limit, 1e-3))
            except TimeoutError:
                raise InputError(
                    f"{self.template!r} took more than {limit:g} s on the id "
                    f"{id_!r} (nested repetition such as (a+)+ backtracks exponentially): "
                    "simplify the pattern", param="pattern") from None
        if m is None:
            return None
        groups = m.groupdict()
        if self.derive is not None:
            return self.derive(groups)
        return {k: ("" if v is None else v) for k, v in groups.items()}


def _labelled(groups: dict, **extra) -> dict | None:
    """The shared preset columns; None (no match) for a train file without a label."""
    label = groups.get("label")
    if groups["split"] == "train" and label is None:
        return None
    return {"machine_type": groups["machine_type"], **extra, "split": groups["split"],
            "label": label or "", "anomaly": LABEL_VALUES.get(label, "")}


def _dcase2020(g: dict) -> dict | None:
    row = _labelled(g, machine_id=g["machine_id"],
                    machine=f"{g['machine_type']}_id_{g['machine_id']}")
    if row is not None:
        row["clip"] = g["clip"]
    return row


def _dcase2021(g: dict) -> dict | None:
    if g["split"] == "train" and g["domain"] is None:
        return None
    if g.get("folder_domain") and g["domain"] not in (None, g["folder_domain"]):
        return None  # a source_test folder holds source-domain files only
    domain = g["domain"] or g.get("folder_domain") or ""
    row = _labelled(g, section=g["section"], machine=f"{g['machine_type']}_section_{g['section']}",
                    domain=domain)
    if row is not None:
        row["clip"] = g["clip"]
        row["attributes"] = g["attributes"] or ""
    return row


# The leading '(?:.*/)?' lets any directories precede the machine type: the match is anchored
# to the id's last three components, wherever the tree was featurized from.
_LEAD = r"(?:.*/)?(?P<machine_type>[^/]+)/(?P<split>train|test)/"

PRESETS: dict[str, Parser] = {
    "dcase2020": Parser(
        "dcase2020", "{machine_type}/{split}/{label}_id_{machine_id}_{n}",
        re.compile(_LEAD + r"(?:(?P<label>normal|anomaly)_)?id_(?P<machine_id>[^/_]+)_(?P<clip>[0-9]+)"),
        ("machine_type", "machine_id", "machine", "split", "label", "anomaly", "clip"),
        _dcase2020),
    "dcase2021": Parser(
        "dcase2021", "{machine_type}/{split}/section_{section}_{domain}_{split}_{label}_{n}[_{attributes}]",
        # DCASE 2021 as released has source_test/ and target_test/ folders instead of test/
        re.compile(r"(?:.*/)?(?P<machine_type>[^/]+)/(?:(?P<folder_domain>source|target)_)?"
                   r"(?P<split>train|test)/section_(?P<section>[0-9]+)"
                   r"(?:_(?P<domain>source|target)_(?P=split))?"
                   r"(?:_(?P<label>normal|anomaly))?"
                   r"_(?P<clip>[0-9]+)(?:_(?P<attributes>[^/]+))?"),
        ("machine_type", "section", "machine", "domain", "split", "label", "anomaly", "clip",
         "attributes"),
        _dcase2021),
}


#: Other names of a preset: the DCASE 2022-2025 file names are the 2021 layout, so
#: ``--preset dcase2023`` reads the files ``ae-featurize --preset dcase2023`` featurized.
ALIASES: dict[str, str] = {"dcase2022": "dcase2021", "dcase2023": "dcase2021",
                           "dcase2024": "dcase2021", "dcase2025": "dcase2021"}


def compile_pattern(text: str) -> Parser:
    """A user's ``--pattern``: a Python regex with named groups, searched in each id."""
    if len(text) > MAX_PATTERN_LENGTH:
        raise InputError(f"{len(text)} characters long; at most {MAX_PATTERN_LENGTH}",
                         param="pattern")
    import regex as regex_module  # the same syntax as re, and a match can time out

    try:
        regex = regex_module.compile(text)
    except (regex_module.error, re.error, ValueError, OverflowError, RecursionError) as exc:
        raise InputError(f"{text!r} is not a valid regular expression: {exc}",
                         param="pattern") from None
    names = tuple(regex.groupindex)  # in the order the groups open
    if not names:
        raise InputError(f"{text!r} has no named groups; name each column as (?P<name>...)",
                         param="pattern")
    if "id" in names:
        raise InputError("a group cannot be named 'id' (that is the id column)", param="pattern")
    return Parser("pattern", text, regex, names, fullmatch=False, timeout=MATCH_TIMEOUT)


def parser_for(preset: str | None = None, pattern: str | None = None) -> Parser:
    """The parser of a preset name or of a user pattern (exactly one of them)."""
    if (preset is None) == (pattern is None):
        raise InputError("give either a preset or a pattern")
    if preset is not None:
        if preset in ALIASES:  # the same layout, named as asked in messages
            from dataclasses import replace

            return replace(PRESETS[ALIASES[preset]], name=preset)
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose from "
                             f"{', '.join([*PRESETS, *ALIASES])}", param="preset")
        return PRESETS[preset]
    return compile_pattern(pattern)


def _attribute_pairs(text: str) -> list[tuple[str, str]] | None:
    """``vel_6_loc_A`` -> [("vel", "6"), ("loc", "A")]; None when it is not key_value pairs."""
    if not text:
        return None
    tokens = text.split("_")
    if len(tokens) % 2 or any(t == "" for t in tokens):
        return None
    keys = tokens[0::2]
    if len(set(keys)) != len(keys):
        return None
    return list(zip(keys, tokens[1::2]))


def _attribute_columns(rows: list[dict | None], taken: Sequence[str]) -> list[tuple[str, str]]:
    """(key, column name) for every attribute key found in more than one id, first seen first.

    A key seen once stays only in ``attributes``: one odd file name must not add a column.
    A key that is already a column name (``split``) gets the prefix ``attr_``.
    """
    counts: dict[str, int] = {}
    for row in rows:
        pairs = _attribute_pairs(row["attributes"]) if row else None
        for key, _ in pairs or ():
            counts[key] = counts.get(key, 0) + 1
    return [(k, f"attr_{k}" if k in taken else k) for k, n in counts.items() if n > 1]


@dataclass
class Labels:
    table: pd.DataFrame      # id + the parsed columns, every cell text ('' when missing)
    unmatched: list[str]     # ids the parser did not match, in input order
    unlabelled: int          # matched ids without a label (preset test files of an evaluation set)


def label_ids(ids: Sequence[str], parser: Parser, allow_unmatched: bool = False) -> Labels:
    """Parse every id; raise InputError when some do not match (unless ``allow_unmatched``,
    which leaves their columns empty) and when none do."""
    if parser.timeout is None:
        rows = [parser.parse(i) for i in ids]
    else:  # each match within its own limit, all of them within the total one
        import time

        deadline = time.monotonic() + TOTAL_MATCH_TIMEOUT
        rows = []
        for i in ids:
            left = deadline - time.monotonic()
            if left <= 0:
                raise InputError(f"{parser.template!r}: matching {len(ids)} ids took "
                                 f"more than {TOTAL_MATCH_TIMEOUT:g} s (stopped at id {i!r}); "
                                 "simplify the pattern", param="pattern")
            rows.append(parser.parse(i, timeout=left))
    unmatched = [i for i, r in zip(ids, rows) if r is None]
    if len(unmatched) == len(ids):
        raise InputError(f"none of the {len(ids)} ids matches {_what(parser)}: "
                         f"{preview(map(repr, ids), 3)}{_hint(parser)}")
    if unmatched and not allow_unmatched:
        raise InputError(f"{len(unmatched)} of {len(ids)} ids do not match {_what(parser)}: "
                         f"{preview(map(repr, unmatched), 3)}; when allowed, they are kept "
                         "with empty columns", param="allow_unmatched")
    columns = list(parser.columns)
    if "attributes" in columns:  # dcase2021: recurring attribute keys become columns
        extra = _attribute_columns(rows, ["id", *columns])
        for row in rows:
            if row is not None:
                pairs = dict(_attribute_pairs(row["attributes"]) or ())
                row.update({col: pairs.get(key, "") for key, col in extra})
        columns += [col for _, col in extra]
    data = {"id": list(ids)}
    for col in columns:
        data[col] = ["" if r is None else r[col] for r in rows]
    table = pd.DataFrame(data, dtype=object)
    unlabelled = 0
    if "label" in columns and parser.derive is not None:
        unlabelled = sum(1 for r in rows if r is not None and r["label"] == "")
    return Labels(table, unmatched, unlabelled)


def _what(parser: Parser) -> str:
    if parser.derive is None:
        return f"pattern {parser.template!r}"
    return f"preset {parser.name} ({parser.template})"


def _hint(parser: Parser) -> str:
    if parser.derive is None:
        return ""
    return ("; the ids must end in MACHINE_TYPE/train|test/FILE: featurize from the directory "
            "that holds the machine types (or above it), or give ae-featurize that directory "
            "as the root")


def read_ids(path: str | os.PathLike) -> list[str]:
    """The ids of a features file (HDF5, by its signature) or of a CSV's ``id`` column
    (``-`` is stdin). Raises InputError for a missing, empty or malformed input, empty ids
    and repeated ids."""
    from aekit.system.textinput import display_name, read_csv

    name = display_name(path)
    p = Path(path)
    if str(path) != "-":
        if not p.exists():
            raise InputError(f"{p}: no such file")
        if p.is_dir():
            raise InputError(f"{p}: is a directory, expected a features file or a CSV")
    if str(path) != "-" and _is_hdf5(p):
        from aekit.data.store import read_ids as read_feature_ids

        ids = read_feature_ids(p)
    else:
        df = read_csv(path, dtype=str, keep_default_na=False)
        if "id" not in df.columns:
            raise InputError(f"{name}: column 'id' not found; columns are: "
                             f"{', '.join(map(str, df.columns))}")
        ids = df["id"].tolist()
        empty = [k + 1 for k, i in enumerate(ids) if i == ""]
        if empty:
            raise InputError(f"{name}: empty id in {len(empty)} row(s): data row(s) {preview(empty)}")
    if not ids:
        raise InputError(f"{name}: no ids")
    seen: set[str] = set()
    repeated = list(dict.fromkeys(i for i in ids if i in seen or seen.add(i)))
    if repeated:
        raise InputError(f"{name}: {len(repeated)} id(s) appear more than once: {preview(repeated, 3)}")
    return ids


def _is_hdf5(p: Path) -> bool:
    """By the signature, read from a regular file only: a pipe (``<(cat labels.csv)``) or a
    device is never probed, since reading its first bytes would consume them; named like an
    HDF5 file it is then refused as not a regular file (opening it could block), else it is
    read as a CSV, once."""
    import stat

    from aekit.data.split import HDF5_SUFFIXES

    try:
        if not stat.S_ISREG(os.stat(p).st_mode):
            return p.suffix.lower() in HDF5_SUFFIXES
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from None
    if head == b"\x89HDF\r\n\x1a\n":
        return True
    import h5py  # an HDF5 file may start after a user block

    try:
        return bool(h5py.is_hdf5(str(p)))
    except OSError:
        return False


def write_table(table: pd.DataFrame, fh) -> None:
    """The labels as CSV, every value as written (no quoting beyond what CSV needs)."""
    table.to_csv(fh, index=False, lineterminator="\n")
