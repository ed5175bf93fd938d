"""The import picture (docs/architecture.md#layers): no arrow runs back up, nothing imports its
neighbour sideways, no module imports itself round a cycle, and no module grows past ~400 lines
without saying why at its top.

Read from the source with `ast`, so the test needs nothing installed and names the offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Bottom to top. A package may import packages of lower layers only.
LAYERS: dict[str, int] = {
    "base": 0,
    "events": 1,
    "migrations": 1,
    "streams": 2,
    "projector": 3,  # builds the read models; others read them through projector.queries
    "scheduler": 4,
    "worker_node": 4,
    "gateway": 5,
    "bots": 6,
    "webhooks": 6,  # the webhook sender, a frontend of sorts: it tells users' URLs about their jobs
    "tessera": 7,  # the launcher: it imports every service to run it
}

# Of a service package, the modules a higher layer may import: pure rules and read-side queries,
# never the running service. The launcher may import anything.
PUBLIC: dict[str, set[str]] = {
    "projector": {"projector.queries"},
    "scheduler": {"scheduler.admission", "scheduler.rules"},
    "worker_node": set(),
    # The webhook service shows a job as the API does (views, links) and opens the secrets the
    # gateway sealed (webhook_secrets).
    "gateway": {"gateway.client", "gateway.schemas", "gateway.views", "gateway.links", "gateway.webhook_secrets"},
}

MAX_LINES = 400
SIZE_REASON = "# over 400 lines:"  # a module may be longer when its top says why


def _modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level_only: bool) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a Tessera module. With `top_level_only`, the
    imports that run when the module is imported (not those inside functions, nor TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    nodes: list[ast.AST]
    if top_level_only:
        nodes = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    else:
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg.
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in LAYERS]
    return found


def test_every_package_is_placed() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and p.name not in ("tests", "bench")}
    assert packages == set(LAYERS), "place every new package in LAYERS (docs/architecture.md#layers)"


def test_no_import_runs_up_or_sideways() -> None:
    wrong = []
    for name, path in MODULES.items():
        package = name.split(".")[0]
        for line, target in _imports(path, top_level_only=False):
            target_package = target.split(".")[0]
            if target_package == package or package == "tessera":
                continue
            if LAYERS[target_package] >= LAYERS[package]:
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} imports {target} (layer {LAYERS[target_package]}"
                    f" from layer {LAYERS[package]})"
                )
            elif target_package in PUBLIC and not any(
                target == m or target.startswith(m + ".") for m in PUBLIC[target_package]
            ):
                wrong.append(
                    f"{path.relative_to(ROOT)}:{line} imports {target}, which is not among "
                    f"{target_package}'s public modules {sorted(PUBLIC[target_package])}"
                )
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {
        name: {t for _, t in _imports(path, top_level_only=True) if t in MODULES and t != name}
        for name, path in MODULES.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    text = MODULES[name].read_text()
    lines = text.count("\n")
    if lines > MAX_LINES:
        head = text.splitlines()[:3]
        assert any(line.startswith(SIZE_REASON) for line in head), (
            f"{MODULES[name].relative_to(ROOT)} has {lines} lines: split it, or say why at its top "
            f"('{SIZE_REASON} <reason>')"
        )
