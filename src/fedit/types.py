"""Shared data types that travel between clients, strategies, engines and the round loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

# LoRA parameters keyed by their peft state-dict name (no adapter name inside the key),
# e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" -> (r, d_in).
AdapterState = dict[str, Tensor]

# ClientUpdate.extras key of SCAFFOLD's control-variate change Δc_i.
CONTROL_DELTA = "control_delta"

# One instruction example, normalised: instruction / input / output / category (all str).
Example = dict[str, str]


@dataclass
class FitInstruction:
    """What the server sends one client for one round (Flower's ``Message`` content, typed).

    ``state`` is the adapter the client starts from, at the client's own rank. ``config`` holds
    scalars the client obeys: ``lr``, ``proximal_mu`` (FedProx), ``trainable`` ("all" or
    "lora_B" for FFA-LoRA), ``compression`` of the upload, ``rank``. ``extras`` holds named
    tensor side-channels, e.g. SCAFFOLD's ``server_control`` and ``client_control``.
    """

    client_id: int
    state: AdapterState
    config: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, AdapterState] = field(default_factory=dict)


@dataclass
class ClientUpdate:
    """What a client sends back after local training: its adapter and its example count.

    ``extras`` carries strategy-specific tensors (SCAFFOLD's ``control_delta``); ``metrics``
    carries scalars (tokens, seconds, bytes sent and received, compression error).
    """

    client_id: int
    state: AdapterState
    num_examples: int
    train_loss: float
    num_steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, AdapterState] = field(default_factory=dict)


@dataclass
class RoundResult:
    """One completed communication round, as written to metrics.jsonl."""

    round: int
    selected_clients: list[int]
    train_loss: dict[int, float]
    num_examples: dict[int, int]
    eval: dict[str, Any] | None
    seconds: dict[str, float]
    lr: float

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "selected_clients": self.selected_clients,
            "train_loss": {str(k): v for k, v in self.train_loss.items()},
            "num_examples": {str(k): v for k, v in self.num_examples.items()},
            "lr": self.lr,
            "eval": self.eval,
            "seconds": self.seconds,
        }
