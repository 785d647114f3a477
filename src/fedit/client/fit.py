"""One client's round: obey the server's instruction, train, and build the reply.

Both engines call ``fit_client`` and nothing else between unpacking an instruction and packing
the reply: it switches to the adapter of the instruction's rank (and back), turns the
``FitConfig`` into a seeded ``LocalObjective`` run of ``train_local`` and adds what the strategy
asked for to the ``ClientUpdate``. The instruction alone decides the client's round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from peft import PeftModel

from fedit.client.attacks import forge_update
from fedit.client.dpo import DPOLoss
from fedit.client.loss import StepLoss
from fedit.client.train import LocalObjective, model_pad_token_id, train_local
from fedit.config import AttackConfig, Config
from fedit.model.lora import add_rank_adapter
from fedit.types import CONTROL_DELTA, AdapterState, ClientUpdate, FitInstruction

DEFAULT_ADAPTER = "default"  # peft's name for the adapter apply_lora creates (rank lora.r)


@contextlib.contextmanager
def _adapter_of_rank(model: PeftModel, cfg: Config, rank: int) -> Iterator[None]:
    """Train a second adapter of ``rank`` (``lora.client_ranks``), then switch back."""
    if rank == cfg.lora.r:
        yield
        return
    model.set_adapter(add_rank_adapter(model, cfg.lora, rank))
    try:
        yield
    finally:
        model.set_adapter(DEFAULT_ADAPTER)


def fit_client(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    progress: Callable[[int, int, float], None] | None = None,
    attack: AttackConfig | None = None,
) -> ClientUpdate:
    """Train from ``instruction.state`` as ``instruction.config`` says.

    Args:
        model: The peft model with the run's LoRA (``apply_lora(base, cfg.lora, cfg.seed)``).
        examples: The client's tokenized training examples (``TokenizedPair``s for DPO).
        cfg: The experiment (its ``train``, ``dpo`` and ``lora`` sections are used).
        instruction: Adapter, ``FitConfig`` and tensor extras from the server.
        progress: Step callback, as for ``train_local``.
        attack: set on a malicious site (``client.attacks``): the reply is forged and marked.

    Returns:
        The update; with SCAFFOLD its ``extras["control_delta"]`` is
        ``Δc_i = (x − y_i) / Σ_t η_t − c`` (Karimireddy et al. 2020, option II).
    """
    config = instruction.config
    objective = LocalObjective(proximal_mu=config.proximal_mu, trainable=config.trainable)
    server_control: AdapterState = {}
    if config.scaffold:
        server_control = instruction.extras["server_control"]
        client_control = instruction.extras["client_control"]
        objective.scaffold_correction = {
            name: server_control[name] - client_control[name] for name in server_control
        }
    with _adapter_of_rank(model, cfg, config.rank):
        update = train_local(
            model,
            examples,
            cfg.train,
            client_id=instruction.client_id,
            lr=config.lr,
            seed=config.seed,
            global_state=instruction.state,
            progress=progress,
            objective=objective,
            step_loss=objective_loss(model, cfg),
        )
    if server_control:
        lr_sum = update.metrics["lr_sum"]
        update.extras[CONTROL_DELTA] = {
            name: (instruction.state[name] - update.state[name]) / lr_sum - server_control[name]
            for name in server_control
        }
    if attack is not None:
        forge_update(update, instruction.state, attack, config.seed)
    return update


def objective_loss(model: PeftModel, cfg: Config) -> StepLoss | None:
    """What the local run minimises: ``DPOLoss`` for ``train.objective=dpo``, else the default
    (next-token loss on the responses)."""
    if cfg.train.objective != "dpo":
        return None
    train = cfg.train
    return DPOLoss(cfg.dpo, model_pad_token_id(model), train.autocast, train.micro_batch_size)
