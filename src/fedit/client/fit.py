"""One client's round: read the server's instruction, train, and build the reply.

Both engines call ``fit_client``: it turns a ``FitInstruction`` into a ``LocalObjective`` for
``train_local`` and adds what the strategy asked for to the ``ClientUpdate``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fedit.client.train import LocalObjective, train_local
from fedit.config import TrainConfig
from fedit.data.templates import TokenizedExample
from fedit.types import CONTROL_DELTA, AdapterState, ClientUpdate, FitInstruction


def fit_client(
    model: nn.Module,
    examples: list[TokenizedExample],
    cfg: TrainConfig,
    instruction: FitInstruction,
    seed: int,
    progress: Callable[[int, int, float], None] | None = None,
) -> ClientUpdate:
    """Train from ``instruction.state`` as the instruction's config says.

    Args:
        model: The peft model, with the adapter of the instruction's rank active.
        examples: The client's tokenized training examples.
        cfg: The ``train`` section of the config.
        instruction: Adapter, scalars (``lr``, ``proximal_mu``, ``trainable``, ``scaffold``)
            and tensor extras from the server.
        seed: The client's training seed for this round.
        progress: Step callback, as for ``train_local``.

    Returns:
        The update; with SCAFFOLD its ``extras["control_delta"]`` is
        ``Δc_i = (x − y_i) / Σ_t η_t − c`` (Karimireddy et al. 2020, option II).
    """
    config = instruction.config
    objective = LocalObjective(
        proximal_mu=float(config.get("proximal_mu", 0.0)),
        trainable=str(config.get("trainable", "all")),
    )
    server_control: AdapterState = {}
    if config.get("scaffold"):
        server_control = instruction.extras["server_control"]
        client_control = instruction.extras["client_control"]
        objective.step_correction = {
            name: server_control[name] - client_control[name] for name in server_control
        }
    update = train_local(
        model,
        examples,
        cfg,
        client_id=instruction.client_id,
        lr=float(config["lr"]),
        seed=seed,
        global_state=instruction.state,
        progress=progress,
        objective=objective,
    )
    if server_control:
        lr_sum = update.metrics["lr_sum"]
        update.extras[CONTROL_DELTA] = {
            name: (instruction.state[name] - update.state[name]) / lr_sum - server_control[name]
            for name in server_control
        }
    return update
