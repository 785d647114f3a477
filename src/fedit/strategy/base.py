"""The Strategy interface: which clients train, what they are sent, how replies are combined."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection

from torch import Tensor

from fedit.config import Config
from fedit.strategy.informed import SelectionContext
from fedit.strategy.selection import (
    Selection,
    among_online,
    build_selector,
    client_seed,
    num_selected,
)
from fedit.types import AdapterState, ClientUpdate, FitConfig, FitInstruction

# Server-side strategy state (momenta, control variates), checkpointed as safetensors.
StrategyState = dict[str, Tensor]


class Strategy(ABC):
    """A federated strategy in two phases, after Flower's ``configure_train``/``aggregate_train``.

    ``configure_fit`` picks the round's clients and builds what each is sent; ``aggregate_fit``
    turns their replies into the next global adapter. Variants subclass ``FedAvg`` and override
    ``fit_config``, ``client_state`` or ``aggregate_fit``; the round loop only calls these
    methods, so a new strategy plugs in without touching it.
    """

    # Whether the global adapter is a model worth scoring each round; False under fedsa,
    # whose server holds (A, B_init) while every client's B stays at the client.
    evaluates_global: bool = True

    def __init__(self, cfg: Config):
        self.cfg = cfg
        federation = cfg.federation
        # What oort, fastest and diverse read; the round loop fills it (server.loop).
        self.selection_context = SelectionContext(settings=federation.oort)
        self.selector = build_selector(
            federation.selection,
            federation.availability,
            federation.sample_rate,
            self.selection_context,
        )
        self.num_clients = federation.num_clients

    def select_among(self, online: Callable[[int], list[int]]) -> None:
        """Select only among the clients ``online(round)`` lists, ``federation.over_select``
        times as many (the simulated clock's availability and over-selection, docs/systems.md)."""
        self.selector = among_online(self.selector, online, self.cfg.federation.over_select)

    def configure_fit(
        self,
        server_round: int,
        global_state: AdapterState,
        client_sizes: list[int],
        lr: float,
        selection_seed: int | None = None,
    ) -> tuple[Selection, list[FitInstruction]]:
        """Select this round's clients (seeded per round) and build one instruction each.

        Args:
            server_round: 1-based round number.
            global_state: The current global adapter.
            client_sizes: Training examples per client (weighted selection uses them).
            lr: The round's client learning rate.
            selection_seed: Draw the selection from this seed instead of the run's (DP's
                secret selection, ``server.privacy.PrivacyRun.selection_seed``).

        Returns:
            The selection (with dropouts, if any) and instructions for the clients that answer.
        """
        self.num_clients = len(client_sizes)
        federation = self.cfg.federation
        count = num_selected(len(client_sizes), federation.fraction_fit, federation.min_fit_clients)
        seed = self.cfg.seed if selection_seed is None else selection_seed
        selection = self.selector(server_round, client_sizes, count, seed)
        instructions = [
            FitInstruction(
                client_id=client_id,
                state=self.client_state(server_round, global_state, client_id),
                config=self.fit_config(server_round, client_id, lr),
                extras=self.client_extras(client_id, global_state),
            )
            for client_id in selection.participants
        ]
        return selection, instructions

    def fit_config(self, server_round: int, client_id: int, lr: float) -> FitConfig:
        """Scalars the client obeys this round; subclasses ``dataclasses.replace`` fields."""
        return FitConfig(
            lr=lr,
            rank=self.cfg.lora.rank_of(client_id),
            seed=client_seed(self.cfg.seed, server_round, client_id),
            compression=self.cfg.federation.upload_compression,
        )

    def client_state(
        self, server_round: int, global_state: AdapterState, client_id: int
    ) -> AdapterState:
        """The adapter a client starts from: the global one, unless a subclass adapts it."""
        del server_round, client_id
        return global_state

    def client_extras(self, client_id: int, global_state: AdapterState) -> dict[str, AdapterState]:
        """Tensor side-channels sent with the adapter (none by default)."""
        del client_id, global_state
        return {}

    @abstractmethod
    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        """Combine the clients' replies into the next global adapter and aggregation metrics."""

    def state_dict(self) -> StrategyState:
        """Server-side tensors to checkpoint (stateless strategies return {})."""
        return {}

    def check_saved(self, keys: Collection[str]) -> None:
        """Refuse, before anything loads, a checkpoint whose tensors (``keys``) this strategy
        cannot resume from (raise ``ConfigError``); any is fine by default."""
        del keys

    def load_state_dict(self, state: StrategyState) -> None:
        """Restore what ``state_dict`` returned."""
        del state  # stateless by default


class Wrapping(Strategy):
    """A strategy around ``inner``: the inner strategy selects, instructs and keeps the
    checkpointed state; a subclass changes only what it overrides (``robust.defended.Defended``
    judges replies, ``strategy.personalized.Personalized`` tells each round the method)."""

    def __init__(self, cfg: Config, inner: Strategy):
        super().__init__(cfg)
        self.inner = inner
        self.selection_context = inner.selection_context  # what the round loop observes
        self.evaluates_global = inner.evaluates_global

    def select_among(self, online: Callable[[int], list[int]]) -> None:
        self.inner.select_among(online)

    def configure_fit(
        self,
        server_round: int,
        global_state: AdapterState,
        client_sizes: list[int],
        lr: float,
        selection_seed: int | None = None,
    ) -> tuple[Selection, list[FitInstruction]]:
        return self.inner.configure_fit(
            server_round, global_state, client_sizes, lr, selection_seed
        )

    def aggregate_fit(
        self, server_round: int, global_state: AdapterState, updates: list[ClientUpdate]
    ) -> tuple[AdapterState, dict[str, float]]:
        return self.inner.aggregate_fit(server_round, global_state, updates)

    def state_dict(self) -> StrategyState:
        return self.inner.state_dict()

    def check_saved(self, keys: Collection[str]) -> None:
        self.inner.check_saved(keys)

    def load_state_dict(self, state: StrategyState) -> None:
        self.inner.load_state_dict(state)
