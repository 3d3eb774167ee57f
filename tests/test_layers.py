"""The package's layers: every import inside fedchain/ points down (or within its own layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import fedchain

PACKAGE = Path(fedchain.__file__).resolve().parent

#: Bottom to top; a module may import from its own layer and the ones before it.
LAYERS = [
    ("fedchain", "fedchain.errors", "fedchain.progress", "fedchain.npm", "fedchain.redact",
     "fedchain.jsonsafe"),
    ("fedchain.storage",),
    ("fedchain.model",),
    # Secure aggregation's pure arithmetic and cryptography (errors only below it).
    ("fedchain.privacy",),
    # The protocol's pure rules and declared fields: below the Ethereum layer, which derives
    # its round parameters from them and samples with them.
    ("fedchain.protocol.rules", "fedchain.protocol.params"),
    ("fedchain.eth",),
    ("fedchain.aggregation",),
    # The round: its fetching, its ledger of chain events, run_round.
    ("fedchain.protocol",),
    ("fedchain.federation",),
    ("fedchain.audit",),
    ("fedchain.cli",),
]


def _layer(module: str) -> int:
    best = -1, 0
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "fedchain" and module.startswith(prefix + ".")):
                best = max(best, (len(prefix), rank))
    if best[0] < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _nodes(tree: ast.AST, typing_only: bool) -> list[ast.AST]:
    """Every node of `tree`; without the bodies of `if TYPE_CHECKING:` unless `typing_only`."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if _type_checking(node) and not typing_only:
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, typing_only: bool = True) -> set[str]:
    """fedchain modules `path` imports, at any depth of the file (lazy imports included;
    imports only for type checkers too, unless `typing_only` is False)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _nodes(ast.parse(path.read_text()), typing_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fedchain")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("fedchain"):
                continue
            # `from fedchain.eth import reverts` imports the module fedchain.eth.reverts.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                found.add(sub if is_module else target)
    return found


def import_graph(typing_only: bool = True) -> dict[str, set[str]]:
    return {
        _module_name(p): {m for m in _imports(p, typing_only) if m != _module_name(p)}
        for p in sorted(PACKAGE.rglob("*.py"))
        if "migrations" not in p.parts
    }


def test_every_import_inside_the_package_points_down_a_layer_or_stays_within_one():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_the_layer_check_sees_lazy_and_relative_imports():
    graph = import_graph()
    # federation.aggregator imports the round relatively, and the CLI imports lazily.
    assert "fedchain.protocol.round" in graph["fedchain.federation.aggregator"]
    assert "fedchain.federation.simulation" in graph["fedchain.cli.commands"]
    assert _layer("fedchain.cli.commands") > _layer("fedchain.eth.chain")


def test_no_import_cycle_inside_a_layer():
    """Modules of one layer may import each other, but never in a circle (a circle makes the
    import order matter, and breaks the first `import` that enters it from the wrong side).
    Imports made only for type checkers run at no time and make no circle."""
    graph = import_graph(typing_only=False)
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
