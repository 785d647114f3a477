"""Ditto at the client (Li et al., ICML 2021): a personal adapter trained beside FedIT's round.

Each round a Ditto client runs two local runs on the one adapter slot of its rank:

1. the **global run**, FedIT's unchanged: ``train_local`` from the received w_t; its result is
   the reply, and the only thing sent;
2. the **personal run**, from the client's own v_k (the namespace ``ditto/personal`` of its
   ``ClientState``; w_t the first time it trains), minimising

       h_k(v) = F_k(v) + λ/2 ‖v − w_t‖²

   with the proximal term anchored at the *received* w_t, not at v_k
   (``LocalObjective.proximal_anchor``). It trains what the round trains (``trainable``) for
   ``personal_steps`` steps (0: as many as the global run's), at ``personalization.lr`` or the
   round's learning rate, and its result is kept (never sent) as the next v_k.

The personal run's seed is ``personal_seed(seed)``: numpy's ``SeedSequence([seed,
PERSONAL_STREAM])`` of the round's seed (itself ``client_seed(run seed, round, client)``), so
it is fixed by the round as the global run's is, yet gives other batches and dropout masks.

Ditto doubles a client's compute per round (with ``personal_steps=0``). At close the client
publishes its last v_k (``client.personal``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from peft import PeftModel

from fedit.client.loss import StepLoss
from fedit.client.state import DITTO_PERSONAL, KeptState
from fedit.client.train import LocalObjective, train_local
from fedit.config import Config, TrainConfig
from fedit.model.lora import set_adapter_state
from fedit.types import AdapterState, ClientUpdate, FitConfig, FitInstruction

# Keeps the personal run's seed apart from the round's own (and from the other seeded draws).
PERSONAL_STREAM = 0xD1770


def personal_seed(seed: int) -> int:
    """The personal run's seed: derived from the round's ``seed``, and not equal to it."""
    return int(np.random.SeedSequence([seed, PERSONAL_STREAM]).generate_state(1)[0])


def personal_train(train: TrainConfig, config: FitConfig) -> TrainConfig:
    """The personal run's ``train.*``: ``personal_steps`` steps, or the global run's number."""
    steps = config.personal_steps
    return dataclasses.replace(train, local_steps=steps) if steps else train


def personal_objective(config: FitConfig, global_state: AdapterState) -> LocalObjective:
    """λ/2 ‖v − w_t‖², anchored at the received global adapter, on the round's trainable."""
    return LocalObjective(
        proximal_mu=config.lam, trainable=config.trainable, proximal_anchor=global_state
    )


def train_personal(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    kept: KeptState,
    update: ClientUpdate,
    step_loss: StepLoss | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> ClientUpdate:
    """Ditto's personal run after the round's global run, on the same (active) adapter slot.

    Args:
        model: The peft model; its active adapter is the round's slot.
        examples: The client's training examples, as for the global run.
        cfg: The experiment (``train.*``, ``personalization.lr``).
        instruction: The round's instruction; its state is w_t, the anchor.
        kept: The client's state this round; v_k is read from it and the new v put back.
        update: The global run's result: the reply. Its state is written back into the slot,
            so the model is left as FedIT's round leaves it; under ``dp_level=none`` its
            metrics gain ``personal_train_loss``.
        step_loss: What each step minimises (a fresh one: DPO's prepares per run).
        progress: The round's step callback. The personal run's steps continue the global
            run's count, with the total grown by the personal run's, so a client's bar runs
            on through both runs instead of waiting at 100%.

    Returns:
        The personal run's own update (its state is the new v_k, already in ``kept``).
    """
    config = instruction.config
    on_step = None
    if progress is not None:
        done = update.num_steps

        def on_step(step: int, total: int, loss: float) -> None:
            progress(done + step, done + total, loss)

    personal = train_local(
        model,
        examples,
        personal_train(cfg.train, config),
        client_id=instruction.client_id,
        lr=cfg.personalization.lr or config.lr,
        seed=personal_seed(config.seed),
        global_state=kept.get(DITTO_PERSONAL) or instruction.state,
        objective=personal_objective(config, instruction.state),
        step_loss=step_loss,
        progress=on_step,
    )
    kept.put(DITTO_PERSONAL, personal.state)
    set_adapter_state(model, update.state)
    if config.dp_level == "none":
        update.metrics["personal_train_loss"] = personal.train_loss
    return personal
