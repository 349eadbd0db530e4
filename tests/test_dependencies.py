"""Dependencies run one way (docs/STYLE.md, "Dependency direction we want in cxr_tf").

Static: every ``import`` in cxr_tf/ (function-level ones too, where most of the package
imports lazily) is read with ``ast``; nothing is imported.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "cxr_tf"

#: Back edges that remain, each with the reason; the test fails when one disappears, so the
#: list only shrinks. None left: export.portable reads data through datasets.relabel now.
KNOWN_BACK_EDGES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> the cxr_tf modules (or names in them) it imports."""
    out = defaultdict(set)
    for f in PKG.rglob("*.py"):
        mod = _module_name(f)
        package = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from .db import x / from . import x
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            out[mod] |= {n for n in names if n == "cxr_tf" or n.startswith("cxr_tf.")}
    return out


def _excused(module: str, target: str) -> bool:
    return any(module == m and (target == t or target.startswith(t + ".")) for m, t in KNOWN_BACK_EDGES)


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _edges(rule) -> list[tuple[str, str]]:
    return sorted((m, t) for m, ts in _imports().items() for t in ts if rule(m, t) and not _excused(m, t))


def test_nothing_below_experiments_imports_an_experiment():
    allowed = {"experiments", "cli"}  # the experiments themselves and the command line on top
    assert _edges(lambda m, t: _top(t) == "experiments" and _top(m) not in allowed) == []


def test_no_experiment_imports_another_experiment():
    """Experiments share through training/ (the task layer, sweeps), never through each other."""
    def experiment(name: str) -> str | None:
        parts = name.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "experiments" else None

    assert _edges(lambda m, t: experiment(m) and experiment(t) and experiment(m) != experiment(t)) == []


def test_models_never_import_training_and_layers_never_import_models():
    assert _edges(lambda m, t: _top(m) == "models" and _top(t) == "training") == []
    assert _edges(lambda m, t: _top(m) == "layers" and _top(t) == "models") == []


def test_data_and_datasets_import_no_models_and_no_trainer():
    assert _edges(lambda m, t: _top(m) in ("data", "datasets") and _top(t) in ("models", "training")) == []
    assert _edges(lambda m, t: _top(m) in ("evaluation", "export") and _top(t) == "training") == []


def test_the_model_registry_is_a_leaf():
    imported = _imports()["cxr_tf.models.registry"]
    assert imported <= {"cxr_tf.errors", "cxr_tf.errors.CXRModelError"}, imported


def test_no_import_cycles_between_top_level_parts():
    graph = defaultdict(set)
    for m, ts in _imports().items():
        for t in ts:
            a, b = _top(m), _top(t)
            if a and b and a != b and not _excused(m, t):
                graph[a].add(b)
    # strongly connected components (Tarjan): a component of more than one part is a cycle
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            comps.append(comp)

    for v in list(graph):
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in comps if len(c) > 1]
    assert cycles == [], {tuple(c): {a: sorted(graph[a] & set(c)) for a in c} for c in map(tuple, cycles)}


def test_known_back_edges_still_exist():
    """Remove an entry from KNOWN_BACK_EDGES once its import is gone."""
    imports = _imports()
    assert all(t in imports[m] for m, t in KNOWN_BACK_EDGES)
