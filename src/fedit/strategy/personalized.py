"""``Personalized``: the configured strategy, with every round's instructions told the
personalization method (``personalization.method``, docs/personalization.md).

The wrapper sits outside ``robust.defended.Defended`` (``Personalized(Defended(inner))``), so
the loop, the defence and every strategy stay as they are: it changes only the ``FitConfig`` of
the instructions the inner strategy builds, by ``dataclasses.replace``, with the fields of
``round_fields``. ``ditto`` needs them in every round: the client trains its personal adapter
after FedIT's run (``client.ditto``), with λ and its own number of steps; the reply, and so
the aggregation, is FedIT's. ``finetune`` changes nothing in the rounds (it acts after the
last one, ``server.closing``), so it is not wrapped.

``fedsa`` (FedSA-LoRA, Guo et al. ICLR 2025) trains A and B at every client and sends only A
(``shared="lora_A"``). The wire fills the unsent B with the instruction's
(``engines.messages.unpack_update``), so the inner strategy averages identical B's and its
momenta for B stay zero; the wrapper then puts the server's B back after aggregation, because
a weighted mean of identical tensors can still round. The server therefore holds
(A_global, B_init), the base model, and does not evaluate it (``evaluates_global``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from fedit.config import Config
from fedit.strategy.base import Strategy, Wrapping
from fedit.strategy.selection import Selection
from fedit.types import AdapterState, ClientUpdate, FitConfig, FitInstruction, shared_names

# The methods that change what a client does in the rounds themselves.
ROUND_METHODS: tuple[str, ...] = ("fedsa", "ditto")
# Methods whose server-side adapter is no client's model, so the rounds are not evaluated.
UNEVALUATED = ("fedsa",)


def round_fields(cfg: Config) -> dict[str, Any]:
    """What a round's ``FitConfig`` carries for the run's method ({} for none and finetune)."""
    personal = cfg.personalization
    if personal.method == "fedsa":  # train A and B, send A: each client's B stays at home
        return {"personalization": "fedsa", "trainable": "all", "shared": "lora_A"}
    if personal.method not in ROUND_METHODS:
        return {}
    return {
        "personalization": personal.method,
        "lam": personal.lam,
        "personal_steps": personal.personal_steps,
    }


class Personalized(Wrapping):
    """``inner`` whose instructions carry ``round_fields``; everything else is ``inner``'s."""

    def __init__(self, cfg: Config, inner: Strategy):
        super().__init__(cfg, inner)
        self.fields = round_fields(cfg)
        self.evaluates_global = inner.evaluates_global and cfg.personalization.method not in (
            UNEVALUATED
        )
        # What a reply carries, for the keys the server keeps as they were (fedsa's B).
        self.sends = FitConfig(lr=0.0, rank=cfg.lora.r, seed=0, **self.fields)

    def configure_fit(
        self,
        server_round: int,
        global_state: AdapterState,
        client_sizes: list[int],
        lr: float,
        selection_seed: int | None = None,
    ) -> tuple[Selection, list[FitInstruction]]:
        selection, instructions = self.inner.configure_fit(
            server_round, global_state, client_sizes, lr, selection_seed
        )
        told = [
            dataclasses.replace(i, config=dataclasses.replace(i.config, **self.fields))
            for i in instructions
        ]
        return selection, told

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, Any]]:
        state, metrics = self.inner.aggregate_fit(server_round, global_state, updates)
        return keep_unsent(global_state, state, shared_names(global_state, self.sends)), metrics


def keep_unsent(
    global_state: AdapterState, state: AdapterState, sent: Collection[str]
) -> AdapterState:
    """``state`` with every key no client sent (``sent`` lacks it) back at ``global_state``'s
    value: fedsa's B stays B_init exactly, whatever the inner strategy's arithmetic did."""
    sent = set(sent)
    return {name: value if name in sent else global_state[name] for name, value in state.items()}


def personalize(cfg: Config, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped in ``Personalized`` when the method acts in the rounds."""
    if cfg.personalization.method not in ROUND_METHODS:
        return strategy
    return Personalized(cfg, strategy)
