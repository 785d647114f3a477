"""A client's own model (personalization): made and published at the client, never sent.

After the last round the server sends every client the final global adapter once more, in an
instruction whose ``phase`` is ``close`` and whose reply carries no adapter (``shared=none``).
The client then makes its personal model and publishes it in its store
(``ClientStateStore.publish``: ``ROOT/personal/client-<id>/``, a PEFT folder that ``fedit serve
--run`` and ``fedit export --client`` read):

- ``finetune``: ``train_local`` from the global adapter on the client's own data for
  ``personalization.local_steps`` steps (or ``train.*``'s usual run), at the instruction's
  learning rate and seed. It is exactly that call, so a test can compare against it.
- ``ditto``: the client's last personal adapter v_k, as its store keeps it (``client.ditto``
  trains it in every round the client takes part in); a client that never trained has none
  and publishes nothing (it is served by the global adapter).
- ``fedsa``: the global A with the client's own B, trained in the rounds (``client.fedsa``);
  nothing trains at close.

The reply says only that the client published: no adapter, loss, steps or example count,
whatever the privacy settings (under secure aggregation nothing per client reaches the server
in a round either); only fedsa's ``mean_b`` adds the client's B and example count.
docs/personalization.md says what each method keeps and against whom.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from peft import PeftModel

from fedit.client.fedsa import close_fedsa
from fedit.client.state import DITTO_PERSONAL, ClientStateStore, Stamp
from fedit.client.train import train_local
from fedit.config import Config, TrainConfig
from fedit.types import AdapterState, ClientUpdate, FitInstruction, unprefixed


def finetune_train(cfg: Config) -> TrainConfig:
    """The local run of ``finetune``: ``train.*`` with ``personalization.local_steps``."""
    steps = cfg.personalization.local_steps
    return dataclasses.replace(cfg.train, local_steps=steps) if steps else cfg.train


def finetune_adapter(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    store: ClientStateStore,
    progress: Callable[[int, int, float], None] | None,
) -> AdapterState | None:
    """finetune: ``train_local`` from the final global adapter on the client's data."""
    config = instruction.config
    update = train_local(
        model,
        examples,
        finetune_train(cfg),
        client_id=instruction.client_id,
        lr=config.lr,
        seed=config.seed,
        global_state=instruction.state,
        progress=progress,
    )
    return update.state


def ditto_adapter(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    store: ClientStateStore,
    progress: Callable[[int, int, float], None] | None,
) -> AdapterState | None:
    """ditto: the client's last personal adapter v_k; None for a client that never trained."""
    kept = store.load(instruction.client_id, Stamp.of(instruction.config))
    return unprefixed(DITTO_PERSONAL, kept) or None


# personalization.method -> what the client publishes at close (None: nothing to publish).
CLOSERS: dict[str, Callable[..., AdapterState | None]] = {
    "finetune": finetune_adapter,
    "ditto": ditto_adapter,
}


def close_client(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    store: ClientStateStore | None,
    progress: Callable[[int, int, float], None] | None = None,
) -> ClientUpdate:
    """The closing phase at one client: make its personal model, publish it, reply.

    Raises:
        ValueError: no store (an engine must give a personalizing client one), or a method
            this client does not know.
        StampError: ditto's instruction carries no valid stamp (``client.state.Stamp``).
    """
    config = instruction.config
    if store is None:
        raise ValueError(f"client {instruction.client_id}: personalization needs a state store")
    if config.personalization == "fedsa":  # publishes, and may report its B (client.fedsa)
        return close_fedsa(model, examples, instruction, store)
    closer = CLOSERS.get(config.personalization)
    if closer is None:
        raise ValueError(
            f"client {instruction.client_id}: unknown personalization {config.personalization!r}"
        )
    adapter = closer(model, examples, cfg, instruction, store, progress)
    if adapter is not None:
        store.publish(instruction.client_id, model, adapter)
    return ClientUpdate(
        instruction.client_id,
        instruction.state,  # not sent: the instruction's shared=none keeps every key at home
        num_examples=0,
        train_loss=0.0,
        num_steps=0,
        metrics={"published": float(adapter is not None)},
    )
