"""In-process simulation: every client trains in turn on one shared base model.

The base model is loaded once. A client is only a slice of tokenized data; "sending" the global
adapter to it means writing the LoRA tensors into the shared model before it trains. Every
instruction and reply still goes through ``engines.messages`` as bytes, so communication is
counted exactly and upload compression has its real effect. Clients with a smaller LoRA rank
train a second adapter of that rank on the same base model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedit.client.evaluate import evaluate_accuracy, evaluate_loss
from fedit.client.fit import fit_client
from fedit.client.train import num_local_steps
from fedit.config import Config
from fedit.data.templates import TokenizedExample
from fedit.engines.messages import pack_instruction, pack_update, unpack_instruction, unpack_update
from fedit.model.lora import (
    add_rank_adapter,
    get_adapter_state,
    load_adapter_state,
    save_adapter,
    set_adapter_state,
)
from fedit.server.observer import RunObserver
from fedit.server.sampling import client_seed
from fedit.types import AdapterState, ClientUpdate, Example, FitInstruction


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

    @property
    def client_sizes(self) -> list[int]:
        """Training examples per client."""
        return [len(examples) for examples in self.client_data]

    def local_steps(self, client_id: int) -> int:
        """Optimizer steps one client takes per round."""
        return num_local_steps(self.cfg.train, len(self.client_data[client_id]))

    def fit(self, instructions: list[FitInstruction], server_round: int) -> list[ClientUpdate]:
        return [self._fit_one(instruction, server_round) for instruction in instructions]

    def _fit_one(self, instruction: FitInstruction, server_round: int) -> ClientUpdate:
        """One client's round trip: bytes down, local training, bytes up."""
        client_id = instruction.client_id
        download = pack_instruction(instruction)
        received = unpack_instruction(download)  # what the client sees
        self.observer.on_client_start(client_id, self.local_steps(client_id))
        rank = int(received.config.get("rank", self.cfg.lora.r))
        if rank != self.cfg.lora.r:
            self.model.set_adapter(add_rank_adapter(self.model, self.cfg.lora, rank))
        try:
            update = fit_client(
                self.model,
                self.client_data[client_id],
                self.cfg.train,
                received,
                seed=client_seed(self.cfg.seed, server_round, client_id),
                progress=self.observer.on_step,
            )
        finally:
            self.model.set_adapter("default")
        upload = pack_update(update, received.state, received.config)
        reply = unpack_update(upload, instruction.state)  # what the server sees
        reply.metrics.update(bytes_down=len(download), bytes_up=len(upload))
        self.observer.on_client_end(reply)
        return reply

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
