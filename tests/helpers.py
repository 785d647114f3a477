"""Helpers shared by test modules (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

from pathlib import Path

from fedit.server.observer import RunObserver


def tiny_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that make the quickstart run in seconds on the tiny model."""
    return [
        f"model.name={model_dir}",
        f"output_dir={out}",
        "data.synthetic.num_examples=160",
        "data.test_per_category=2",
        "federation.num_clients=4",
        "federation.rounds=2",
        "federation.fraction_fit=0.5",
        "train.local_steps=2",
        "train.batch_size=4",
        "train.micro_batch_size=2",
        "eval.max_new_tokens=4",
        *extra,
    ]


class CrashInRound(RunObserver):
    def __init__(self, server_round: int):
        self.server_round = server_round

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        if server_round == self.server_round:
            raise KeyboardInterrupt
