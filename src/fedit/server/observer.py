"""Hooks the round loop and engines call as work progresses; the CLI draws progress bars."""

from __future__ import annotations

from typing import Any

from fedit.types import ClientUpdate


class RunObserver:
    """No-op hooks. Subclass and override what you want to show or record."""

    def on_prepared(self, partition_table: dict[str, Any]) -> None:
        """Called once the data is split and tokenized, before any training."""

    def on_run_start(self, first_round: int, last_round: int) -> None:
        """Called once before the first round that will run."""

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        """Called after the clients of a round are selected."""

    def on_client_start(self, client_id: int, total_steps: int) -> None:
        """Called before a client starts local training."""

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        """Called after each local optimizer step."""

    def on_client_end(self, update: ClientUpdate) -> None:
        """Called with each client's reply."""

    def on_baseline_start(self, name: str, total_steps: int) -> None:
        """Called before ``fedit compare`` trains a baseline (a Local-k client, Centralized)."""

    def on_eval_start(self, label: str) -> None:
        """Called before an evaluation ("base" or "round N")."""

    def on_eval_progress(self, label: str, done: int, total: int) -> None:
        """Called after each evaluated batch of ``fedit eval`` / ``compare`` (rows done)."""

    def on_eval_end(self, label: str, metrics: dict[str, Any]) -> None:
        """Called with an evaluation's metrics."""

    def on_round_end(self, record: dict[str, Any]) -> None:
        """Called with the round's metrics.jsonl record once its checkpoint is complete."""


class Observers(RunObserver):
    """Several observers as one (progress bars and experiment tracking), called in order."""

    def __init__(self, *observers: RunObserver | None):
        self.observers = [observer for observer in observers if observer is not None]

    def on_prepared(self, partition_table: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.on_prepared(partition_table)

    def on_run_start(self, first_round: int, last_round: int) -> None:
        for observer in self.observers:
            observer.on_run_start(first_round, last_round)

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        for observer in self.observers:
            observer.on_round_start(server_round, selected)

    def on_client_start(self, client_id: int, total_steps: int) -> None:
        for observer in self.observers:
            observer.on_client_start(client_id, total_steps)

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        for observer in self.observers:
            observer.on_step(step, total_steps, loss)

    def on_client_end(self, update: ClientUpdate) -> None:
        for observer in self.observers:
            observer.on_client_end(update)

    def on_baseline_start(self, name: str, total_steps: int) -> None:
        for observer in self.observers:
            observer.on_baseline_start(name, total_steps)

    def on_eval_start(self, label: str) -> None:
        for observer in self.observers:
            observer.on_eval_start(label)

    def on_eval_progress(self, label: str, done: int, total: int) -> None:
        for observer in self.observers:
            observer.on_eval_progress(label, done, total)

    def on_eval_end(self, label: str, metrics: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.on_eval_end(label, metrics)

    def on_round_end(self, record: dict[str, Any]) -> None:
        for observer in self.observers:
            observer.on_round_end(record)
