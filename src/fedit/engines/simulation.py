"""In-process simulation: every client trains in turn on one shared base model.

The base model is loaded once. A client is only a slice of tokenized data; "sending" the global
adapter to it means writing the LoRA tensors into the shared model before it trains.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedit.client.evaluate import evaluate_accuracy, evaluate_loss
from fedit.client.train import num_local_steps, train_local
from fedit.config import Config
from fedit.data.templates import TokenizedExample
from fedit.model.lora import get_adapter_state, load_adapter_state, save_adapter, set_adapter_state
from fedit.server.observer import RunObserver
from fedit.server.sampling import client_seed
from fedit.types import AdapterState, ClientUpdate, Example


class SimulationEngine:
    """Runs clients sequentially in this process on a single PeftModel."""

    def __init__(
        self,
        cfg: Config,
        model: Any,
        tokenizer: Any,
        client_data: list[list[TokenizedExample]],
        test_examples: list[Example],
        test_tokenized: list[TokenizedExample],
        scorer: Callable[[str, str], bool],
        observer: RunObserver | None = None,
    ):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.client_data = client_data
        self.test_examples = test_examples
        self.test_tokenized = test_tokenized
        self.scorer = scorer
        self.observer = observer or RunObserver()
        self.num_clients = len(client_data)
        self._initial = get_adapter_state(model)  # LoRA init right after apply_lora (seeded)

    def initial_state(self) -> AdapterState:
        return {name: tensor.clone() for name, tensor in self._initial.items()}

    def local_steps(self, client_id: int) -> int:
        """Optimizer steps one client takes per round."""
        return num_local_steps(self.cfg.train, len(self.client_data[client_id]))

    def fit(
        self, client_ids: list[int], global_state: AdapterState, server_round: int, lr: float
    ) -> list[ClientUpdate]:
        updates = []
        for client_id in client_ids:
            self.observer.on_client_start(client_id, self.local_steps(client_id))
            update = train_local(
                self.model,
                self.client_data[client_id],
                self.cfg.train,
                client_id=client_id,
                lr=lr,
                seed=client_seed(self.cfg.seed, server_round, client_id),
                global_state=global_state,
                progress=self.observer.on_step,
            )
            self.observer.on_client_end(update)
            updates.append(update)
        return updates

    def evaluate(self, state: AdapterState | None) -> dict[str, Any]:
        if state is None:
            with self.model.disable_adapter():
                return self._score()
        set_adapter_state(self.model, state)
        return self._score()

    def _score(self) -> dict[str, Any]:
        evaluation = self.cfg.eval
        metrics: dict[str, Any] = {}
        if self.test_tokenized:
            metrics.update(evaluate_loss(self.model, self.test_tokenized, evaluation.batch_size))
        if evaluation.generate and self.test_examples:
            metrics.update(
                evaluate_accuracy(
                    self.model,
                    self.tokenizer,
                    self.test_examples,
                    self.cfg.data.template,
                    evaluation.max_new_tokens,
                    evaluation.batch_size,
                    self.scorer,
                )
            )
        return metrics

    def save_adapter(self, state: AdapterState, path: Path) -> None:
        save_adapter(self.model, state, path)

    def load_adapter(self, path: Path) -> AdapterState:
        return load_adapter_state(path)
