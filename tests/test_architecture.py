"""The package's layers and the rule between them, read from the source's imports.

``config <- modeling <- detection <- data <- inference <- {train, deploy} <- studies <- cli``:
a module imports only from its own package and from layers below it, never from a sibling
layer or above. ``data`` is stricter: of the package it imports only ``config``, ``devices``
(the device names) and the image decoding and letterbox of ``detection.transform`` (the one letterbox that evaluation and
prediction share), so a dataset can be read without building a model; it sits below
``inference`` because evaluation reads datasets.

Imports inside functions count for both rules (they are for heavy optional third-party
dependencies, never for getting around a cycle): the package's modules form no import cycle,
counting every import wherever it is in a file and the modules the lazy facade
(``efficientdet/__init__.py``'s ``_EXPORTS``) loads by name; only ``if TYPE_CHECKING:`` blocks,
which never run, are left out of the cycle rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "efficientdet"
LAYERS: dict[str, int] = {
    "config": 0,
    "devices": 0,
    "modeling": 1,
    "detection": 2,
    "data": 3,
    "inference": 4,
    "train": 5,
    "deploy": 5,
    "studies": 6,
    "cli": 7,
}
# Layers held to a short list of what they may import from other layers.
RESTRICTED = {"data": {"config", "devices", "detection.transform"}}
ROOT_MODULES = {"__init__", "__main__"}  # the lazy public facade and `python -m`
ROOT_NAMES = {"__version__"}  # what a module may take from the package root


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted name below the package (``"__init__"`` for the root) -> source file."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks (they only type the code)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        test = node.test
        name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
        if name == "TYPE_CHECKING":
            inside |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return inside


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(dotted name below the package, inside ``if TYPE_CHECKING:``?) for every import in
    ``path``, at module level or inside a function. ``from .x import a`` gives ``x.a``: the
    module ``x.a`` when there is one, else the name ``a`` of ``x`` (see :func:`_module_of`)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    package = [] if name == "__init__" else name.split(".") if is_package else name.split(".")[:-1]
    type_only = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        bases: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                bases = [".".join([*base, *([node.module] if node.module else [])])]
            elif node.module and node.module.split(".")[0] == "efficientdet":
                bases = [node.module.partition(".")[2]]
            targets = [f"{b}.{a.name}".strip(".") for b in bases for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [
                a.name.partition(".")[2] for a in node.names
                if a.name == "efficientdet" or a.name.startswith("efficientdet.")
            ]
        else:
            continue
        found += [(t, id(node) in type_only) for t in targets]
    return found


def _lazy_exports(path: Path) -> set[str]:
    """The modules a lazy facade loads on attribute access: the values of a module-level
    ``_EXPORTS = {"Name": "module", ...}`` (what the root ``__init__`` imports by name)."""
    modules: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
            names = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in names):
                modules |= {
                    v.value for v in node.value.values
                    if isinstance(v, ast.Constant) and isinstance(v.value, str)
                }
    return modules


def _module_of(target: str, modules: Mapping[str, Path]) -> str:
    """The package module an import of ``target`` loads: its longest dotted prefix that is
    a module, the root ``__init__`` when none is (``from .. import __version__``)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return "__init__"


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (module level, inside
    functions, the lazy facade's ``_EXPORTS``), leaving out ``if TYPE_CHECKING:`` blocks."""
    modules = _modules(package)
    graph = {}
    for name, path in modules.items():
        targets = {_module_of(t, modules) for t, type_only in _imports(name, path) if not type_only}
        targets |= {m for m in _lazy_exports(path) if m in modules}
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]`` (the first a depth-first walk over sorted
    names meets), or None when the graph is acyclic."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        on_path = {start}
        pending = [iter(sorted(graph.get(start, ())))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                pending.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                pending.append(iter(sorted(graph.get(nxt, ()))))
    return None


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_sits_in_a_layer() -> None:
    strays = [m for m in _modules() if _layer(m) not in LAYERS and m not in ROOT_MODULES]
    assert strays == [], f"modules outside the layers {sorted(LAYERS)}: {strays}"


@pytest.mark.parametrize("module", [m for m in _modules() if m not in ROOT_MODULES])
def test_imports_follow_the_layer_rule(module: str) -> None:
    layer = _layer(module)
    modules = _modules()
    bad = []
    for target, _ in _imports(module, modules[module]):
        if target in ROOT_NAMES:
            continue
        imported = _module_of(target, modules)
        other = _layer(imported)
        if other == layer:
            continue
        if layer in RESTRICTED and imported not in RESTRICTED[layer] or other not in LAYERS or LAYERS[other] >= LAYERS[layer]:
            bad.append(imported)
    assert bad == [], f"{module} ({layer}) imports {bad}: against the rule in tests/test_architecture.py"


def test_no_import_cycles_counting_imports_inside_functions() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_the_graph_holds_function_level_and_facade_imports_but_not_type_checking_ones() -> None:
    graph = import_graph()
    assert "modeling.pretrained" in graph["modeling.factory"]  # module level
    assert "modeling.model" in graph["modeling.pretrained"]  # inside weights_size_bytes
    assert "modeling.factory" in graph["__init__"]  # the facade's create_model
    assert "__init__" in graph["cli.main"]  # from .. import __version__
    assert "studies.ablation" not in graph["deploy.export"]  # only `if TYPE_CHECKING:` there


def test_find_cycle_on_hand_made_graphs() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"y"}, "y": {"z", "x"}, "z": set()}) == ["x", "y", "x"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"d"}, "d": {"e"}, "e": {"c"}}) == [
        "c", "d", "e", "c"
    ]


def test_a_cycle_through_an_import_inside_a_function_fails(tmp_path: Path) -> None:
    package = tmp_path / "efficientdet"
    (package / "modeling").mkdir(parents=True)
    (package / "__init__.py").write_text('_EXPORTS = {"create_model": "modeling.registry"}\n')
    (package / "modeling" / "__init__.py").write_text("")
    (package / "modeling" / "registry.py").write_text(
        "def create_model():\n    from .pretrained import fetch_weights\n    return fetch_weights\n"
    )
    (package / "modeling" / "pretrained.py").write_text(
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .model import Net\n\n"
        "def fetch_weights():\n    from efficientdet.modeling.registry import create_model\n"
        "    return create_model\n"
    )
    (package / "modeling" / "model.py").write_text("from . import pretrained\n")
    graph = import_graph(package)
    assert graph["__init__"] == {"modeling.registry"}
    assert graph["modeling.pretrained"] == {"modeling.registry"}  # not model: TYPE_CHECKING
    assert graph["modeling.model"] == {"modeling.pretrained"}
    assert find_cycle(graph) == ["modeling.registry", "modeling.pretrained", "modeling.registry"]


def test_only_the_cli_parses_arguments() -> None:
    users = [
        name for name, path in _modules().items()
        if _layer(name) != "cli" and "argparse" in {
            alias.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import) for alias in node.names
        }
    ]
    assert users == []
