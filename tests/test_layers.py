"""The layers go one way: cli -> ddn -> pipeline; no module-level import circles.

Read from the source with ast (every import, also those inside functions), so the test
needs no import side effects and names the file and line of a violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "ddn", "cli")
# What each layer may import from this project.
ALLOWED = {"pipeline": {"pipeline"}, "ddn": {"ddn", "pipeline"}, "cli": set(PACKAGES)}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) of this project's imports in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            # "from ddn.train import loop" imports the module ddn.train.loop too.
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in found if m.split(".")[0] in PACKAGES]


def sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in sources()
        for name, line in imports(path)
        if name.split(".")[0] not in ALLOWED[path.relative_to(REPO).parts[0]]
    ]
    assert not wrong, wrong


def test_inference_and_evaluation_import_no_training_code():
    for name in ("inference", "evaluation", "predictor", "trained_runs"):
        path = REPO / "ddn" / f"{name}.py"
        training = [
            f"{n} (line {line})"
            for n, line in imports(path)
            if n == "ddn.train" or n.startswith("ddn.train.")
        ]
        assert not training, (path.name, training)


def test_no_import_circle_at_module_level():
    known = {module_name(p) for p in sources()}
    graph: dict[str, set[str]] = {}
    for path in sources():
        targets = {n for n, _ in imports(path, top_level_only=True) if n in known}
        graph[module_name(path)] = targets - {module_name(path)}
    # A package __init__ that re-exports its submodules is not a circle of its own.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}

    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                circles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert not circles, circles


def test_the_checks_see_a_violation(tmp_path):
    bad = tmp_path / "mod.py"
    bad.write_text("import os\nfrom ddn.train import loop\n\ndef f():\n    import cli.main\n")
    assert imports(bad) == [("ddn.train", 2), ("ddn.train.loop", 2), ("cli.main", 5)]
    assert imports(bad, top_level_only=True) == [("ddn.train", 2), ("ddn.train.loop", 2)]
