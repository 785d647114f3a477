"""The server's copy of the model: the initial adapter, evaluation, and adapter files.

One base model with the run's LoRA (``apply_lora(base, cfg.lora, seed)``) and the held-out test
set. In-process, the simulation transport trains the clients on this same model object, so
memory holds one base model whatever the number of clients.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedit.client.attacks import backdoor_success_rate
from fedit.client.evaluate import evaluate_accuracy, evaluate_loss
from fedit.client.evaluate_preference import base_reference, evaluate_preferences
from fedit.config import Config
from fedit.model.lora import get_adapter_state, load_adapter_state, save_adapter, set_adapter_state
from fedit.types import AdapterState, Example


class GlobalModel:
    """Implements ``server.protocols.ServerModel`` on a loaded PeftModel."""

    def __init__(
        self,
        cfg: Config,
        model: Any,
        tokenizer: Any,
        test_examples: list[Example],
        test_tokenized: list[Any],  # TokenizedExamples, or TokenizedPairs for DPO
        scorer: Callable[[str, str], bool],
    ):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.test_examples = test_examples
        self.test_tokenized = test_tokenized
        self.scorer = scorer
        self._initial = get_adapter_state(model)  # LoRA init (seeded), or model.adapter
        self._reference: Any = None  # DPO: base log-probs of the test pairs, computed once

    def initial_state(self) -> AdapterState:
        return {name: tensor.clone() for name, tensor in self._initial.items()}

    def evaluate(self, state: AdapterState | None, generate: bool = True) -> dict[str, Any]:
        if self.cfg.train.objective == "dpo" and self._reference is None and self.test_tokenized:
            # Before any disable_adapter() block: peft's context re-enables adapters on exit.
            self._reference = base_reference(
                self.model, self.test_tokenized, self.cfg.eval.batch_size
            )
        if state is None:
            with self.model.disable_adapter():
                return self._score(generate)
        set_adapter_state(self.model, state)
        return self._score(generate)

    def _score(self, generate: bool) -> dict[str, Any]:
        evaluation = self.cfg.eval
        metrics: dict[str, Any] = {}
        if self.test_tokenized and self.cfg.train.objective == "dpo":
            pairs = self.test_tokenized
            chosen = [pair.chosen for pair in pairs]  # held-out loss = loss of the chosen answers
            metrics.update(evaluate_loss(self.model, chosen, evaluation.batch_size))
            metrics.update(
                evaluate_preferences(
                    self.model, pairs, self.cfg.dpo.beta, evaluation.batch_size, self._reference
                )
            )
        elif self.test_tokenized:
            metrics.update(evaluate_loss(self.model, self.test_tokenized, evaluation.batch_size))
        if evaluation.generate and generate and self.test_examples:
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
            if self.cfg.attack.kind == "backdoor":
                metrics["backdoor_asr"] = backdoor_success_rate(
                    self.model,
                    self.tokenizer,
                    self.test_examples,
                    self.cfg.attack,
                    self.cfg.data.template,
                    evaluation.max_new_tokens,
                    evaluation.batch_size,
                )
        return metrics

    def save_adapter(self, state: AdapterState, path: Path) -> None:
        save_adapter(self.model, state, path)

    def load_adapter(self, path: Path) -> AdapterState:
        return load_adapter_state(path)
