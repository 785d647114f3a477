"""Rich progress bars for rounds, clients and local steps, with ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fedit.server.observer import RunObserver
from fedit.types import ClientUpdate


class ProgressObserver(RunObserver):
    """Draws three bars: rounds, clients of the current round, steps of the current client."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("[bold]{task.description:<14}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.rounds: TaskID | None = None
        self.clients: TaskID | None = None
        self.steps: TaskID | None = None
        self.evals: TaskID | None = None

    def __enter__(self) -> ProgressObserver:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_prepared(self, partition_table: dict[str, Any]) -> None:
        from fedit.data.partition import format_count_table

        console = self.progress.console
        # soft_wrap: a wide clients x categories table scrolls rather than folding its rows.
        console.print(
            format_count_table(partition_table), markup=False, highlight=False, soft_wrap=True
        )
        tok = partition_table.get("tokenization", {})
        console.print(
            f"{partition_table['num_train']} training examples, {partition_table['num_test']} "
            f"held out; truncated at train.cutoff_len: {tok.get('truncated', 0)} of "
            f"{tok.get('total', 0)}",
            markup=False,
            highlight=False,
        )

    def on_run_start(self, first_round: int, last_round: int) -> None:
        self.rounds = self.progress.add_task(
            "rounds", total=last_round, completed=first_round - 1, info=""
        )

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        if self.clients is None:
            self.clients = self.progress.add_task("clients", total=len(selected), info="")
        self.progress.reset(self.clients, total=len(selected), description=f"round {server_round}")

    def on_client_start(self, client_id: int, total_steps: int) -> None:
        if self.steps is None:
            self.steps = self.progress.add_task("steps", total=total_steps, info="")
        self.progress.reset(
            self.steps, total=total_steps, description=f"client {client_id}", info=""
        )

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        if self.steps is not None:
            # the total can grow within a client: Ditto's personal run follows the global one
            self.progress.update(
                self.steps, completed=step, total=total_steps, info=f"loss {loss:.3f}"
            )

    def on_client_end(self, update: ClientUpdate) -> None:
        if self.clients is not None:
            self.progress.advance(self.clients)
            self.progress.update(self.clients, info=f"last loss {update.train_loss:.3f}")

    def on_baseline_start(self, name: str, total_steps: int) -> None:
        self.progress.console.log(f"training {name} ({total_steps} steps) ...")
        if self.steps is None:
            self.steps = self.progress.add_task("steps", total=total_steps, info="")
        self.progress.reset(self.steps, total=total_steps, description=name, info="")

    def on_eval_start(self, label: str) -> None:
        self.progress.console.log(f"evaluating {label} ...")

    def on_eval_progress(self, label: str, done: int, total: int) -> None:
        if self.evals is None:
            self.evals = self.progress.add_task(label, total=total, info="")
        if done == 0:
            self.progress.reset(self.evals, total=total, description=label, info="")
        self.progress.update(self.evals, completed=done)

    def on_eval_end(self, label: str, metrics: dict[str, Any]) -> None:
        keys = ("loss", "accuracy", "backdoor_asr")
        parts = [f"{k} {metrics[k]:.4f}" for k in keys if k in metrics]
        self.progress.console.log(f"{label}: " + ", ".join(parts))

    def on_round_end(self, record: dict[str, Any]) -> None:
        if self.rounds is not None:
            evaluation = record.get("eval") or {}
            info = f"acc {evaluation['accuracy']:.3f}" if "accuracy" in evaluation else ""
            self.progress.update(self.rounds, completed=record["round"], info=info)
