"""The package's shape: layers point one way, modules stay small, names stay in sync.

Imports are read from the source (lazy ones inside functions included), so a cycle cannot hide
behind an import placed in a function body.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedit"
ROOT = SRC.parents[1]
MAX_LINES = 400


def _unit(module: Path) -> str:
    """The layer a module belongs to: its package under fedit/, or the module itself."""
    parts = module.relative_to(SRC).with_suffix("").parts
    return parts[0]


def _imported_units(module: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "fedit":
                names = [f"fedit.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "fedit" and len(parts) > 1:
                units.add(parts[1])
    return units


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in SRC.rglob("*.py"):
        unit = _unit(module)
        if unit == "__init__":
            continue
        graph.setdefault(unit, set()).update(_imported_units(module) - {unit})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle between layers, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        state[unit] = 1
        path.append(unit)
        for other in sorted(graph.get(unit, ())):
            if state.get(other) == 1:
                return path[path.index(other) :] + [other]
            if other not in state and (found := visit(other)):
                return found
        path.pop()
        state[unit] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (found := visit(unit)):
            return found
    return None


def test_no_package_imports_a_package_that_imports_it_back():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


@pytest.mark.parametrize(
    ("lower", "upper"),
    [
        ("server", "engines"),  # engines only move data; the loop knows them by protocol
        ("strategy", "server"),  # selection belongs to the strategy side, as in Flower
        ("engines", "experiment"),
        ("reporting", "evaluation"),  # the run report sits below experiment ...
        ("experiment", "evaluation"),  # ... the eval and compare commands above it
        ("client", "engines"),
        ("types", "config"),
    ],
)
def test_layer_does_not_reach_up(lower, upper):
    assert upper not in _graph()[lower]


def test_flwr_is_imported_only_by_the_flower_modules():
    # flower_simulation.py starts Flower's simulation runtime with the apps of flower_app.py;
    # it sits beside flower_app (above experiment), so it cannot live in engines/.
    flower_modules = {SRC / "engines" / "flower.py", SRC / "flower_app.py"}
    # The training round's following of restarted sites, beside the transport that uses it.
    flower_modules.add(SRC / "engines" / "flower_roster.py")
    flower_modules.add(SRC / "flower_simulation.py")
    # supernode_main is Flower's SuperNode itself, started with its polls capped.
    flower_modules.add(SRC / "engines" / "supernode_main.py")
    # Secure aggregation is built from Flower's primitives (crypto, Shamir, quantization).
    flower_modules |= {
        SRC / "engines" / name
        for name in ("secagg.py", "flower_secagg.py", "flower_secagg_client.py")
    }
    importers = {
        module
        for module in SRC.rglob("*.py")
        if any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(
                name.split(".")[0] == "flwr"
                for name in (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [alias.name for alias in node.names]
                )
            )
            for node in ast.walk(ast.parse(module.read_text(encoding="utf-8")))
        )
    }
    assert importers <= flower_modules, sorted(str(m) for m in importers - flower_modules)


def test_no_module_is_over_the_house_limit():
    long = {
        str(module.relative_to(SRC)): lines
        for module in SRC.rglob("*.py")
        if (lines := len(module.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long


def test_config_choices_match_the_registries():
    from fedit import config
    from fedit.client.schedule import LOCAL_LR_SCHEDULES
    from fedit.data.partition import PARTITIONERS
    from fedit.strategy.selection import SELECTORS

    assert set(config.PARTITION_METHODS) == set(PARTITIONERS)
    assert set(config.LOCAL_LR_SCHEDULES) == set(LOCAL_LR_SCHEDULES)
    # availability (random plus dropouts) and poisson are built with their probability
    assert set(config.SELECTIONS) == set(SELECTORS) | {"availability", "poisson"}


def test_the_packaged_quickstart_is_the_repository_one():
    packaged = SRC / "configs" / "quickstart.yaml"
    assert packaged.read_bytes() == (ROOT / "configs" / "quickstart.yaml").read_bytes()
