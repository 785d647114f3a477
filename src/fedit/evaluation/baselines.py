"""The paper's reference points for FedIT: Local-k and Centralized, on FedIT's own step budget.

Both follow the schedule FedIT actually ran, read from its ``metrics.jsonl``:

- **Local-k**: client *c* trains alone on its own data. In every round where FedIT trained *c*,
  it takes the same number of steps at that round's learning rate (a fresh AdamW each round, as
  FedIT's clients do), but continues from its *own* adapter instead of the global one. So it
  gets exactly the per-client step budget FedIT gave it, and never sees another client's data.
- **Centralized**: all clients' training data pooled. In round *r* it takes as many steps as all
  of FedIT's clients took together in round *r*, at round *r*'s learning rate: the same total
  number of steps, on data that no federation would be allowed to pool.

Example:
    schedule = step_schedule(history, steps_per_client)
    state = train_schedule(model, examples, cfg, schedule[3], start, client_id=3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedit.client.fit import objective_loss
from fedit.client.train import train_local
from fedit.config import Config, ConfigError
from fedit.data.templates import TokenizedExample
from fedit.strategy.selection import client_seed
from fedit.types import AdapterState


@dataclass(frozen=True)
class Stint:
    """One round of a baseline's training: how many steps, at which learning rate."""

    server_round: int
    lr: float
    steps: int


def step_schedule(
    history: list[dict[str, Any]], steps_per_client: list[int]
) -> dict[int, list[Stint]]:
    """Each client's FedIT training, round by round: ``client -> [Stint, ...]``.

    Args:
        history: FedIT's ``metrics.jsonl`` records (round 0, the base model, has no training).
        steps_per_client: Optimizer steps each client takes per round.

    Returns:
        For every client, the rounds it answered in (``train_loss`` keys), in order.
    """
    schedule: dict[int, list[Stint]] = {c: [] for c in range(len(steps_per_client))}
    for record in history:
        if record.get("round", 0) < 1:
            continue
        for client in sorted(int(c) for c in record.get("train_loss", {})):
            schedule[client].append(Stint(record["round"], record["lr"], steps_per_client[client]))
    return schedule


def pooled_schedule(schedule: dict[int, list[Stint]]) -> list[Stint]:
    """Centralized training's rounds: each round's steps summed over FedIT's clients."""
    rounds: dict[int, Stint] = {}
    for stints in schedule.values():
        for stint in stints:
            previous = rounds.get(stint.server_round)
            steps = stint.steps + (previous.steps if previous else 0)
            rounds[stint.server_round] = Stint(stint.server_round, stint.lr, steps)
    return [rounds[r] for r in sorted(rounds)]


def choose_local_clients(cfg: Config, schedule: dict[int, list[Stint]]) -> list[int]:
    """``compare.local_clients``, or the ``compare.num_local`` clients FedIT trained most
    (ties: lower id first). Clients FedIT never trained have no budget and are refused."""
    budgets = {client: sum(s.steps for s in stints) for client, stints in schedule.items()}
    chosen = cfg.compare.local_clients
    if chosen is None:
        ranked = sorted((c for c in budgets if budgets[c] > 0), key=lambda c: (-budgets[c], c))
        return sorted(ranked[: cfg.compare.num_local])
    idle = [client for client in chosen if budgets.get(client, 0) == 0]
    if idle:
        raise ConfigError(
            f"compare.local_clients: FedIT never trained client {idle[0]}, so Local-k has no "
            "step budget for it; pick clients that took part"
        )
    return sorted(dict.fromkeys(chosen))


def train_schedule(
    model: Any,
    examples: list[TokenizedExample],
    cfg: Config,
    stints: list[Stint],
    start: AdapterState,
    client_id: int,
    on_stint: Callable[[Stint], None] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[AdapterState, int]:
    """Train one adapter through ``stints`` on ``examples``, each stint continuing the last.

    Args:
        model: The peft model (its "default" adapter is trained in place).
        examples: The tokenized training data (one client's, or everyone's pooled).
        cfg: The experiment (``train`` section, ``seed``).
        stints: The rounds to train, in order.
        start: The adapter to start from (FedIT's seeded LoRA initialisation).
        client_id: Seeds batch order and dropout like a FedIT client (``client_seed``).
        on_stint: Called before each stint.
        progress: ``progress(step, total, loss)`` after every step.

    Returns:
        The trained adapter and the total number of steps taken.
    """
    state, total = start, 0
    for stint in stints:
        if on_stint is not None:
            on_stint(stint)
        train_cfg = dataclasses.replace(cfg.train, local_steps=stint.steps)
        update = train_local(
            model,
            examples,
            train_cfg,
            client_id=client_id,
            lr=stint.lr,
            seed=client_seed(cfg.seed, stint.server_round, client_id),
            global_state=state,
            progress=progress,
            step_loss=objective_loss(model, cfg),  # DPO's pairs, or the default next-token loss
        )
        state, total = update.state, total + update.num_steps
    return state, total
