"""The house's dependency rules, read from the imports (DESIGN section 1, README "Architecture").

Every ``import`` and ``from … import`` in ``service/``, ``training/`` and ``bench/`` (at any
depth: a lazy import inside a function counts too) is parsed with :mod:`ast`. Each package
may import only the packages its row in :data:`SERVICE` or :data:`TRAINING` names; training
reaches into the service only through :data:`TRAINING_MAY_USE_FROM_SERVICE`; the service
never imports torch or training; and no two modules import each other, directly or round a
longer circle. The last test feeds the checker a deliberately wrong import to show it bites.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# unit -> the units it may import (besides itself). A unit is a subpackage
# ("service.market") or a top-level module ("service.settings").
SERVICE: dict[str, set[str]] = {
    "service.features": set(),
    "service.metrics": set(),
    "service.market": {"service.metrics"},
    "service.model": {"service.features"},
    "service.pipeline": {"service.features", "service.market", "service.model", "service.metrics"},
    "service.paper": {"service.pipeline", "service.metrics"},
    "service.monitor": {
        "service.features",
        "service.market",
        "service.model",
        "service.pipeline",
        "service.metrics",
    },
    "service.settings": {"service.market"},
    "service.runtime": {
        "service.features",
        "service.market",
        "service.model",
        "service.pipeline",
        "service.paper",
        "service.monitor",
        "service.metrics",
        "service.settings",
    },
    "service.http": {
        "service.features",
        "service.market",
        "service.model",
        "service.pipeline",
        "service.paper",
        "service.monitor",
        "service.metrics",
        "service.settings",
        "service.runtime",
    },
    "service.replay": {"service.market", "service.metrics"},
    # the entry points sit on top of everything
    "service.__main__": {"service.*"},
    "service.demo": {"service.*"},
    "service.demo_refresh": {"service.*"},
}
TRAINING_MAY_USE_FROM_SERVICE = {
    "service.features",
    "service.model.card",
    "service.market.klines",
    "service.market.kline_io",
    "service.market.bybit",
    "service.market.rest",  # training fetch: the service's own REST client
    "service.monitor.signal_journal",  # the journal is a data set (training journal, audit)
    "service.model.registry",  # training refresh registers the student it made
    # the backtest runs the very objects the service runs (DESIGN section 11: no second
    # implementation): the ONNX predictor, the paper account's arithmetic and its policy
    "service.model.predictor",
    "service.paper.account",
    "service.paper.journal",  # AccountTerms and Fill, the account's records
    "service.paper.policy",
}
FROM_SERVICE = TRAINING_MAY_USE_FROM_SERVICE
TRAINING: dict[str, set[str]] = {
    "training.config": set(),
    "training.progress": set(),
    "training.analysis": set(),
    "training.data": {"training.config"},
    "training.nets": {"training.config"},
    "training.distill": {"training.config", "training.data", "training.nets"},
    "training.scoring": {"training.config", "training.data", "training.nets"},
    "training.experiments": {
        "training.config",
        "training.progress",
        "training.data",
        "training.nets",
        "training.distill",
        "training.scoring",
    },
    "training.export": {
        "training.config",
        "training.analysis",
        "training.data",
        "training.nets",
        "training.distill",
        "training.experiments",
        "training.scoring",
    },
    "training.report": {"training.*"},
    "training.refresh": {"training.*"},
    "training.__main__": {"training.*"},
}
RULES = SERVICE | TRAINING


def unit_of(module: str) -> str:
    """``service.market.feed`` -> ``service.market``; ``service.settings`` -> itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in ``source``; ``from a import b`` gives
    ``a.b`` (b may be a module or a name: the checks resolve which)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                yield node.lineno, f"relative import in {module} (the house uses absolute ones)"
                continue
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def project_modules(*tops: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for top in tops:
        for path in (ROOT / top).rglob("*.py"):
            out[module_name(path)] = path
    return out


def _allowed(src_unit: str, target_unit: str) -> bool:
    allowed = RULES[src_unit]
    top = src_unit.split(".")[0]
    return target_unit == src_unit or target_unit in allowed or f"{top}.*" in allowed


def violations(module: str, source: str, known: set[str]) -> list[str]:
    """The import-rule breaches of one module (``known``: every project module name)."""
    out: list[str] = []
    src_top = module.split(".")[0]
    src_unit = unit_of(module)
    for line, target in imports(source, module):
        if target.startswith("relative import"):
            out.append(target)
            continue
        top = target.split(".")[0]
        where = f"{module}:{line} imports {target}"
        if src_top == "service" and top in ("torch", "training"):
            out.append(f"{where}: the service never imports torch or training")
            continue
        if top not in ("service", "training"):
            continue
        # `from pkg import name`: the target is pkg.name when that is a module, else pkg
        target_mod = target if target in known else target.rsplit(".", 1)[0]
        if src_top == "training" and top == "service":
            if not any(
                target_mod == ok or target_mod.startswith(ok + ".")
                for ok in TRAINING_MAY_USE_FROM_SERVICE
            ):
                out.append(
                    f"{where}: training may use only {sorted(TRAINING_MAY_USE_FROM_SERVICE)}"
                )
            continue
        if (src_top == "service" and top == "service") or src_top == "training" == top:
            if src_unit not in RULES:
                out.append(f"{where}: {src_unit} has no row in the rules")
                continue
            if target_mod in (src_top,):
                continue  # `from service import features`: resolved to the module above
            if not _allowed(src_unit, unit_of(target_mod)):
                out.append(f"{where}: {src_unit} may not import {unit_of(target_mod)}")
    return out


def module_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for _, target in imports(path.read_text(), mod):
            t = target if target in known else target.rsplit(".", 1)[0]
            if t in known and t != mod and not mod.startswith(t + "."):
                graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_package_imports_only_what_its_rule_allows() -> None:
    mods = project_modules("service", "training")
    known = set(mods)
    bad = [v for m, p in sorted(mods.items()) for v in violations(m, p.read_text(), known)]
    assert not bad, "\n".join(bad)


def test_every_unit_has_a_rule() -> None:
    units = {unit_of(m) for m in project_modules("service", "training")} - {"service", "training"}
    assert units <= set(RULES), sorted(units - set(RULES))


@pytest.mark.parametrize("top", ["service", "training", "bench"])
def test_no_import_circles(top: str) -> None:
    assert cycles(module_graph(project_modules(top))) == []


def test_no_folder_is_a_crowd_and_no_module_repeats_its_package() -> None:
    for top in ("service", "training"):
        for folder in [ROOT / top, *(p for p in (ROOT / top).rglob("*") if p.is_dir())]:
            if folder.name in ("__pycache__", "static"):
                continue
            modules = [p for p in folder.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, f"{folder} holds {len(modules)} modules"
            for p in modules:
                assert not p.stem.startswith(folder.name + "_"), p
            if modules:
                init = folder / "__init__.py"
                doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
                assert doc, f"{init} says nothing of what lives there"


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("service.market.feed", "from service.pipeline.scoring import Pipeline\n", "may not"),
        ("service.model.predictor", "import torch\n", "never imports torch"),
        ("service.paper.account", "def f():\n    from training import config\n", "never"),
        ("training.nets.networks", "from training.report import study\n", "may not"),
        ("training.data.dataset", "from service.runtime import Runtime\n", "may use only"),
    ],
)
def test_a_wrong_import_is_caught(module: str, source: str, why: str) -> None:
    known = set(project_modules("service", "training"))
    found = violations(module, source, known)
    assert found and why in found[0], found


def test_a_circle_is_caught() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
