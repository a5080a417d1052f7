"""The house shows the pipeline: packages by stage, imports only downward, no cycles, no module
over 500 lines, and the public API where the README says it is."""

from __future__ import annotations

import ast
from pathlib import Path


import aekit

LIB = Path(aekit.__file__).resolve().parent
#: The stages in the order the data flows; a package imports only those before it.
ORDER = ["errors", "system", "audio", "data", "models", "evaluate", "train"]
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(LIB.rglob("*.py")):
        parts = [p for p in f.relative_to(LIB).with_suffix("").parts if p != "__init__"]
        mods[".".join(["aekit", *parts])] = f
    return mods


def _imports(path: Path, mods: dict) -> set[str]:
    """The aekit modules a file imports, TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "aekit":
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(mods)
            out |= subs or ({node.module} & set(mods))
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names} & set(mods)
    return out


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_lib_is_packages_by_stage():
    top = sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert top == sorted(ORDER[1:])
    loose = sorted(p.stem for p in LIB.glob("*.py"))
    assert loose == ["__init__", "errors"]


def test_no_module_over_500_lines():
    big = {m: n for m, f in _modules().items()
           if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


def test_imports_go_down_the_stages_only():
    mods = _modules()
    up = []
    for m, f in mods.items():
        for t in _imports(f, mods):
            a, b = _stage(m), _stage(t)
            if a and b and ORDER.index(b) > ORDER.index(a):
                up.append(f"{m} -> {t}")
    assert up == []


def test_no_import_cycles():
    mods = _modules()
    graph = {m: _imports(f, mods) - {m} for m, f in mods.items()}
    # Any cycle shows up as a node that reaches itself.
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            n = todo.pop()
            if n == start:
                cycles.append(start)
                break
            if n not in seen:
                seen.add(n)
                todo.extend(graph.get(n, ()))
    assert cycles == []


def test_public_api_unchanged():
    """The names of the public API before the restructuring, each still importable from aekit."""
    assert set(aekit.__all__) == {
        "__version__", "load_model", "LoadedModel", "model_params", "featurize_files",
        "score_files", "score_features", "score_array", "ScoreRecord", "stored_threshold",
        "resolve_score", "model_threshold", "fit_threshold", "open_features", "MelParams"}
    for name in aekit.__all__:
        assert getattr(aekit, name) is not None


def test_readme_architecture_is_this_tree():
    """One line per package in the README's tree, and every module named under its package."""
    readme = (LIB.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture\n", 1)[1].split("\n## ", 1)[0]
    tree = section.split("```", 2)[1]
    listed = [ln.split()[0].rstrip("/") for ln in tree.splitlines()[1:] if ln.startswith("  ")]
    assert listed == ["errors.py", *ORDER[1:]]
    for pkg in ORDER[1:]:
        line = next(ln for ln in section.splitlines() if ln.startswith(f"- **`{pkg}`**"))
        start = section.index(line)
        bullet = section[start:section.find("\n- **", start + 1)]
        missing = [f.stem for f in (LIB / pkg).glob("*.py")
                   if f.stem != "__init__" and f"`{f.stem}`" not in bullet]
        assert missing == [], (pkg, missing)
