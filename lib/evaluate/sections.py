"""The metric registry: one entry per metric section of an ae-eval report.

An entry (:class:`MetricSection`) owns everything about its section:

- ``needs``: the :class:`~aekit.evaluate.evaluation.EvalOptions` fields that must be set for
  the section to be computed (none: always computed);
- ``check(ctx)``: loads and checks the label columns it needs, before any forward pass
  (an :class:`~aekit.errors.InputError` then costs nothing); it keeps what it found on
  ``ctx.labels`` for ``compute``;
- ``compute(ctx) -> dict``: the JSON-ready section, from the per-clip scores and codes of
  ``ctx`` (:class:`~aekit.evaluate.evalcontext.EvalContext`);
- its summary: ``summarize`` (whether ``ae-eval --summarize`` averages its numbers),
  ``settings`` (numeric keys that are settings, not results: never averaged), ``detail``
  (last key parts that ``--table`` leaves out unless ``--all-metrics``), ``schema`` (its
  description in the report schema), ``done`` (its part of ae-eval's closing log line); ``codes``: whether
  ``compute`` needs the codes z of the evaluated clips (``ctx.scores.latents``);
  ``table(section, file_type) -> {(machine type, key): {column: value}}`` (optional): how
  ``ae-table --section NAME`` shows it, one row per machine type and key (titled
  ``table_key``); ``file_type`` is TYPE of a report file named LABEL.TYPE.json, else None.

The registry is :data:`MODULES`, ``"module:ATTRIBUTE"`` names imported when first needed (so
listing the sections imports no torch); :func:`register` adds an entry from a notebook.
Every reader of reports (``flatten_metrics``, ``--summarize``, ``--table``) asks the registry,
so a new section needs no other edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Callable

from aekit.errors import InputError

#: The report format this aekit writes and reads, and the format versions it knows.
REPORT_FORMAT = "aekit-eval"
REPORT_FORMAT_VERSION = 1
KNOWN_VERSIONS = (1,)

#: Last parts of metric keys left out of tables by default: counts and spread statistics.
DETAIL = frozenset({"count", "normal", "anomalous", "train_count", "std", "min", "max",
                    "p5", "p25", "p75", "p95", "value", "tp", "fp", "fn", "tn"})


@dataclass(frozen=True)
class MetricSection:
    """One report section: how it is checked and computed, and how it is summarized."""

    name: str
    compute: Callable[[object], dict]
    needs: tuple[str, ...] = ()
    check: Callable[[object], None] | None = None
    summarize: bool = True
    settings: frozenset = frozenset()
    detail: frozenset = DETAIL
    schema: str = ""
    done: Callable[[dict], str] | None = None
    codes: bool = False
    table: Callable[[dict, str | None], dict] | None = None
    table_key: str = "id"

    def wanted(self, opts) -> bool:
        """Whether the evaluation options ask for this section."""
        values = [getattr(opts, n, None) for n in self.needs]
        return all(v is not None and v is not False for v in values)


#: The registered sections, in report order: "module:ATTRIBUTE" of each MetricSection.
MODULES: tuple[str, ...] = (
    "aekit.evaluate.builtin_sections:RECONSTRUCTION",
    "aekit.evaluate.builtin_sections:ANOMALY",
    "aekit.evaluate.builtin_sections:DCASE",
    "aekit.evaluate.builtin_sections:PROBE",
)

_ADDED: dict[str, MetricSection] = {}


def register(section: MetricSection) -> MetricSection:
    """Add a section at run time (a notebook, a test); InputError when its name is taken."""
    if not isinstance(section, MetricSection):
        raise TypeError("register takes a MetricSection")
    if section.name in {s.name for s in registered()}:
        raise InputError(f"a metric section named {section.name!r} is already registered")
    _ADDED[section.name] = section
    return section


def unregister(name: str) -> None:
    """Remove a section added with :func:`register` (no error when there is none)."""
    _ADDED.pop(name, None)


def _load(spec: str) -> MetricSection:
    module, _, attr = spec.partition(":")
    entry = getattr(import_module(module), attr)
    if not isinstance(entry, MetricSection):
        raise TypeError(f"{spec} is not a MetricSection")
    return entry


def registered() -> list[MetricSection]:
    """Every section, in report order: those of :data:`MODULES`, then those registered."""
    out = [_load(spec) for spec in MODULES]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"metric sections registered twice: {names}")
    return out + [s for n, s in _ADDED.items() if n not in names]


def get(name: str) -> MetricSection | None:
    """The section called ``name`` (None when there is none)."""
    return next((s for s in registered() if s.name == name), None)


def summarized() -> tuple[str, ...]:
    """The names of the sections whose numbers ``--summarize`` averages."""
    return tuple(s.name for s in registered() if s.summarize)


def report_schema() -> str:
    """One line per registered section: the report's metric sections, from the registry."""
    return "\n".join(f"{s.name:<15} {s.schema}" for s in registered())
