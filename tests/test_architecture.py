"""The import rules of docs/ARCHITECTURE.md, checked on the source (AST walk, every import,
also the ones inside functions).

Layers, bottom to top: ``errors`` / ``utils`` → shared layers (``data``, ``backbones``,
``metrics``, ``engine``, then ``teachers``, ``losses``, ``gpt``) → ``tokenizer`` → the task
families (``synthesis``, ``vqa``, ``incontext``) → ``report`` → ``cli``. An import may only
point down; a family never imports another family, nor the tokenizer's trainer or benchmarks;
no package-level cycle.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "meditok"

#: unit → layer rank (an import must go to a strictly lower rank, or stay inside its unit)
LAYERS = {
    "errors": 0, "utils": 1,
    "data": 2, "backbones": 2, "metrics": 3, "engine": 2,
    "teachers": 4, "losses": 4, "gpt": 4,
    "tokenizer": 5,
    "synthesis": 6, "vqa": 6, "incontext": 6,
    "report": 7,
    "cli": 8,
    "__main__": 9, "__init__": 9,
}
FAMILIES = ("synthesis", "vqa", "incontext")
#: shared layers may use each other only downwards in this order (no cycles among them)
SHARED_ORDER = ("data", "backbones", "engine", "metrics", "teachers", "losses", "gpt")
#: parts of the tokenizer a task family must not import
TOKENIZER_PRIVATE = ("meditok.tokenizer.train", "meditok.tokenizer.bench")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, t) for line, t in found if t == "meditok" or t.startswith("meditok.")]


def _all_edges():
    for path in sorted(ROOT.rglob("*.py")):
        src = _module_name(path)
        for line, target in _imports(path):
            yield path, line, src, target


def test_every_module_is_in_a_known_layer():
    units = {_unit(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert units <= set(LAYERS), f"unknown top-level units {sorted(units - set(LAYERS))}: add them to LAYERS"


def test_imports_point_down_and_families_stay_apart():
    bad = []
    for path, line, src, target in _all_edges():
        su, tu = _unit(src), _unit(target)
        if target == "meditok" and su not in ("cli", "__main__", "__init__"):
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} imports the package root")
            continue
        if su == tu or target == "meditok":
            continue
        if LAYERS[tu] >= LAYERS[su]:
            if not (su in SHARED_ORDER and tu in SHARED_ORDER
                    and SHARED_ORDER.index(tu) < SHARED_ORDER.index(su)):
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} {src} -> {target} "
                           f"({su} may not import {tu})")
        elif su in SHARED_ORDER and tu in SHARED_ORDER and SHARED_ORDER.index(tu) > SHARED_ORDER.index(su):
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} {src} -> {target} (shared "
                       f"layer {su} may not import {tu})")
        if su in FAMILIES and any(target == p or target.startswith(p + ".") for p in TOKENIZER_PRIVATE):
            bad.append(f"{path.relative_to(ROOT.parent)}:{line} family {su} imports {target}")
    assert not bad, "import rules broken:\n" + "\n".join(bad)


def test_no_package_level_cycles():
    graph: dict[str, set[str]] = defaultdict(set)
    for _, _, src, target in _all_edges():
        a, b = _unit(src), _unit(target)
        if a != b and target != "meditok":
            graph[a].add(b)
    seen, stack, cycles = set(), [], []

    def visit(node: str) -> None:
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, f"import cycles between packages: {cycles}"


@pytest.mark.parametrize("name", ["meditok.model", "meditok.eval", "meditok.train", "meditok.tasks",
                                  "meditok.config"])
def test_old_layout_is_gone(name):
    rel = Path(*name.split("."))
    assert not (ROOT.parent / rel).exists() and not (ROOT.parent / rel).with_suffix(".py").exists()
