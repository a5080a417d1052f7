"""ae-eval reports as files: their provenance, reading them back (``load_reports``, the one
check every reader uses) and ``ae-eval --summarize`` (``summarize_files``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from aekit.errors import InputError
from aekit.evaluate.sections import KNOWN_VERSIONS, REPORT_FORMAT
from aekit.system.fileio import file_sha256


def provenance(model_path: str | os.PathLike, features_path: str | os.PathLike,
               splits_path: str | os.PathLike | None = None, split: str | None = None,
               fold: int | None = None) -> dict:
    """Where a result came from: paths and content hashes of its inputs, and the selection."""
    out = {
        "model": str(model_path), "model_sha256": file_sha256(model_path),
        "features": str(features_path), "features_sha256": file_sha256(features_path),
        "splits": None, "splits_sha256": None,
        "split": split, "fold": fold,
    }
    if splits_path is not None:
        out["splits"] = str(splits_path)
        if str(splits_path) != "-" and Path(splits_path).is_file():
            out["splits_sha256"] = file_sha256(splits_path)
    return out


def load_reports(paths: Sequence[str], check_version: bool = False) -> list[dict]:
    """Read ae-eval JSON reports ('-' = stdin), refusing anything else (InputError); with
    ``check_version``, also a report whose format_version this aekit does not know."""
    from aekit.system.textinput import read_json_input

    loaded = []
    for path in paths:
        rep = read_json_input(path, "an ae-eval report")
        if not isinstance(rep, dict) or rep.get("format") != REPORT_FORMAT:
            raise InputError(f"{path}: not an ae-eval report (expected \"format\": "
                             f"\"{REPORT_FORMAT}\")")
        version = rep.get("format_version")
        if check_version and (type(version) is not int or version not in KNOWN_VERSIONS):
            raise InputError(f"{path}: ae-eval report format_version {version!r} is not known "
                             f"to this aekit (it reads {', '.join(map(str, KNOWN_VERSIONS))})")
        loaded.append(rep)
    return loaded


def summarize_files(paths: Sequence[str], command: str = "") -> dict:
    """ae-eval --summarize as a function: mean, std, min, max of every metric over the reports."""
    from aekit.evaluate import metrics

    summary = metrics.summarize_reports(load_reports(paths), list(paths))
    summary["command"] = command
    return summary
