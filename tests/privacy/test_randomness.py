"""Nothing a DP guarantee rests on is derived from the config seed, unless reproducible_noise.

The check reads the DP path's source with ``ast``: any read of a ``seed`` (an attribute or a
name) must sit inside a branch on ``reproducible_noise``, so a later change that seeds the
noise, DP-SGD's batches or the private selection from ``cfg.seed`` fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np

from fedit.privacy import randomness
from fedit.privacy.randomness import NoiseSource

SRC = Path(__file__).resolve().parents[2] / "src" / "fedit"
DP_PATH = [
    "privacy/mechanism.py",
    "privacy/accountant.py",
    "privacy/plan.py",
    "privacy/threats.py",
    "client/dpsgd.py",
    "client/site_policy.py",
    "server/privacy.py",
]
# Reads allowed outside such a branch, each with its reason.
ALLOWED = {
    # example level: selection is not part of that guarantee, so it stays public and the plan
    # replays it from the run's seed to count each client's DP-SGD steps
    ("server/privacy_budget.py", "exposure"),
}


def _seed_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, function) of every read of a ``seed`` (``cfg.seed``, ``config.seed``, a ``seed``
    argument) outside a branch on ``reproducible_noise``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, function: str, guarded: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node.name
        if isinstance(node, (ast.If, ast.IfExp)) and "reproducible" in ast.unparse(node.test):
            guarded = True
        is_read = isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load)
        is_read = is_read and (getattr(node, "attr", None) or getattr(node, "id", None)) == "seed"
        if is_read and not guarded:
            found.append((node.lineno, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function, guarded)

    visit(tree, "<module>", False)
    return found


def test_no_function_in_the_dp_path_reads_a_seed_outside_reproducible_noise():
    offenders = []
    for module in [*DP_PATH, "server/privacy_budget.py"]:
        tree = ast.parse((SRC / module).read_text(encoding="utf-8"))
        for line, function in _seed_reads(tree):
            if (module, function) not in ALLOWED:
                offenders.append(f"{module}:{line} in {function}")
    assert offenders == []


def test_the_check_catches_a_seeded_draw():
    seeded = "def noise(cfg):\n    return draw(cfg.seed)\n"
    guarded = (
        "def noise(cfg):\n    if cfg.privacy.reproducible_noise:\n        return draw(cfg.seed)\n"
    )
    assert _seed_reads(ast.parse(seeded)) == [(2, "noise")]
    assert _seed_reads(ast.parse(guarded)) == []


def test_secure_source_ignores_the_stream_and_reproducible_source_follows_it():
    secure = NoiseSource()
    assert not secure.reproducible
    draws = [secure.generator(1, 2).standard_normal(4) for _ in range(2)]
    assert not np.array_equal(*draws)  # fresh entropy each time, whatever the stream
    seeded = NoiseSource(reproducible_seed=7)
    assert seeded.reproducible
    same = [seeded.generator(1, 2).standard_normal(4) for _ in range(2)]
    assert np.array_equal(*same)
    assert not np.array_equal(same[0], seeded.generator(1, 3).standard_normal(4))
    assert secure.selection_seed(1) != secure.selection_seed(1)
    assert seeded.selection_seed(1) == seeded.selection_seed(1) != seeded.selection_seed(2)


def test_secure_entropy_comes_from_secrets(monkeypatch):
    calls = []

    def fake(bits):
        calls.append(bits)
        return 5

    monkeypatch.setattr(randomness.secrets, "randbits", fake)
    NoiseSource().generator(1)
    NoiseSource().selection_seed(1)
    assert calls == [randomness.ENTROPY_BITS] * 2 and randomness.ENTROPY_BITS >= 128
