"""The package's layers and the rule between them, read from the source's imports.

``config <- modeling <- detection <- data <- inference <- {train, deploy} <- studies <- cli``:
a module imports only from its own package and from layers below it, never from a sibling
layer or above. ``data`` is stricter: of the package it imports only ``config``, ``devices``
(the device names) and the image decoding and letterbox of ``detection.transform`` (the one letterbox that evaluation and
prediction share), so a dataset can be read without building a model; it sits below
``inference`` because evaluation reads datasets. Imports inside functions count too (they are
for heavy optional third-party dependencies, never for getting around a cycle), and the
module-level imports form no cycle.
"""

from __future__ import annotations

import ast
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


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported module below efficientdet, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks only type the code
        if isinstance(node, ast.If):
            top_level |= {id(n) for n in node.body}
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [module] if node.module else [f"{module}.{a.name}".strip(".") for a in node.names]
            elif node.module and node.module.split(".")[0] == "efficientdet":
                targets = [node.module.partition(".")[2]]
        elif isinstance(node, ast.Import):
            targets = [a.name.partition(".")[2] for a in node.names if a.name.startswith("efficientdet.")]
        found += [(t, id(node) in top_level) for t in targets if t]
    return found


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_sits_in_a_layer() -> None:
    strays = [m for m in _modules() if _layer(m) not in LAYERS and m not in ROOT_MODULES]
    assert strays == [], f"modules outside the layers {sorted(LAYERS)}: {strays}"


@pytest.mark.parametrize("module", [m for m in _modules() if m not in ROOT_MODULES])
def test_imports_follow_the_layer_rule(module: str) -> None:
    layer = _layer(module)
    bad = []
    for target, _ in _imports(module, _modules()[module]):
        if target in ROOT_NAMES:
            continue
        other = _layer(target)
        if other == layer:
            continue
        if layer in RESTRICTED and target not in RESTRICTED[layer] or other not in LAYERS or LAYERS[other] >= LAYERS[layer]:
            bad.append(target)
    assert bad == [], f"{module} ({layer}) imports {bad}: against the rule in tests/test_architecture.py"


def test_no_import_cycles_at_module_level() -> None:
    modules = _modules()
    graph = {
        name: {t for t, top in _imports(name, path) if top and t in modules and t != name}
        for name, path in modules.items()
    }
    # A package's __init__ re-exporting its own modules is not a cycle with them.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_only_the_cli_parses_arguments() -> None:
    users = [
        name for name, path in _modules().items()
        if _layer(name) != "cli" and "argparse" in {
            alias.name for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Import) for alias in node.names
        }
    ]
    assert users == []
