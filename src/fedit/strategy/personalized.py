"""``Personalized``: the configured strategy, with every round's instructions told the
personalization method (``personalization.method``, docs/personalization.md).

The wrapper sits outside ``robust.defended.Defended`` (``Personalized(Defended(inner))``), so
the loop, the defence and every strategy stay as they are: it changes only the ``FitConfig`` of
the instructions the inner strategy builds, by ``dataclasses.replace``, with the fields of
``round_fields``. ``ditto`` needs them in every round: the client trains its personal adapter
after FedIT's run (``client.ditto``), with λ and its own number of steps; the reply, and so
the aggregation, is FedIT's. ``finetune`` changes nothing in the rounds (it acts after the
last one, ``server.closing``), so it is not wrapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from fedit.config import Config
from fedit.strategy.base import Strategy, StrategyState
from fedit.strategy.selection import Selection
from fedit.types import AdapterState, ClientUpdate, FitInstruction

# The methods that change what a client does in the rounds themselves.
ROUND_METHODS: tuple[str, ...] = ("ditto",)


def round_fields(cfg: Config) -> dict[str, Any]:
    """What a round's ``FitConfig`` carries for the run's method ({} for none and finetune)."""
    personal = cfg.personalization
    if personal.method not in ROUND_METHODS:
        return {}
    return {
        "personalization": personal.method,
        "lam": personal.lam,
        "personal_steps": personal.personal_steps,
    }


class Personalized(Strategy):
    """``inner`` whose instructions carry ``round_fields``; everything else is ``inner``'s."""

    def __init__(self, cfg: Config, inner: Strategy):
        super().__init__(cfg)
        self.inner = inner
        self.fields = round_fields(cfg)
        self.selection_context = inner.selection_context  # the inner strategy selects

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
        return self.inner.aggregate_fit(server_round, global_state, updates)

    def state_dict(self) -> StrategyState:
        return self.inner.state_dict()

    def check_saved(self, keys: Collection[str]) -> None:
        self.inner.check_saved(keys)

    def load_state_dict(self, state: StrategyState) -> None:
        self.inner.load_state_dict(state)


def personalize(cfg: Config, strategy: Strategy) -> Strategy:
    """``strategy`` wrapped in ``Personalized`` when the method acts in the rounds."""
    if cfg.personalization.method not in ROUND_METHODS:
        return strategy
    return Personalized(cfg, strategy)
