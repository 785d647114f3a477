"""Shared data types that travel between clients, strategies, engines and the round loop."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

# LoRA parameters keyed by their peft state-dict name (no adapter name inside the key),
# e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" -> (r, d_in).
AdapterState = dict[str, Tensor]

# ClientUpdate.extras key of SCAFFOLD's control-variate change Δc_i.
CONTROL_DELTA = "control_delta"

# ClientUpdate.extras key of a fedsa client's own B_i, reported at close (FitConfig.report_local).
LOCAL_LORA_B = "local_lora_B"

# ClientUpdate.client_id of a reply that a defence combined from several clients (fedit.robust).
COMBINED_CLIENT_ID = -1

# FitConfig.trainable: which LoRA factors the client trains ("lora_B": FFA-LoRA freezes A).
TRAINABLE = ("all", "lora_B")
# FitConfig.shared: which trained factors the reply carries ("lora_A": FedSA-LoRA keeps B at
# the client; "none": a round that sends no adapter back).
SHARED = ("all", "lora_A", "none")

# One instruction example, normalised: instruction / input / output / category (all str).
Example = dict[str, str]


class FitConfigError(ValueError):
    """An instruction header that does not describe a ``FitConfig``; names the key and client."""


@dataclass(frozen=True)
class FitConfig:
    """The scalars a client obeys for one round; the defaults are plain FedAvg training.

    A strategy builds it (``Strategy.fit_config``, variants change fields with
    ``dataclasses.replace``); it travels as the ``config`` of an instruction's header, as its
    ``asdict``; ``client.fit.fit_client`` turns it into the client's local run. A new
    client-side option is one field here, one strategy that sets it, and the client code that
    reads it.
    """

    lr: float  # peak learning rate of this round's local run (the server's schedule)
    rank: int  # LoRA rank the client trains (lora.client_ranks; the adapter arrives at it)
    seed: int  # seeds the client's batch order and LoRA dropout this round
    compression: str = "none"  # upload codec (communication.COMPRESSIONS)
    trainable: str = "all"  # "all" LoRA parameters, or "lora_B" (FFA-LoRA freezes A)
    shared: str = "all"  # of the trained tensors, which the reply carries (SHARED)
    proximal_mu: float = 0.0  # FedProx's μ: the client minimises F_k(w) + μ/2 ‖w − w_global‖²
    scaffold: bool = False  # SCAFFOLD: correct every step by c − c_i and reply with Δc_i
    # Differential privacy (fedit.privacy): "none", "client" (clip the update, optionally add
    # noise) or "example" (DP-SGD with per-example clipping at dp_clip_norm, noise z per step).
    # The client draws all of its noise and batches itself; nothing here seeds them.
    dp_level: str = "none"
    dp_clip_norm: float = 0.0  # C: the update's L2 clip (client) or each example's (example)
    # z: example level, noise std z·C on each step's sum; client level with noise_at=clients,
    # the update's z_Δ, of which each client adds the share N(0, z²C²/D)
    dp_noise_multiplier: float = 0.0
    dp_noise_shares: float = 0.0  # D, the plan's expected clients per round; 0: server adds noise
    dp_count_noise_std: float = 0.0  # adaptive clip, noise_at=clients: σ_b, of which √(1/D) each
    # Personalization (config.personalization, client.personal): the method, and the phase:
    # "round" (a federated round) or "close" (after the last round: the client makes and
    # publishes its own model, and sends no adapter).
    personalization: str = "none"
    phase: str = "round"
    lam: float = 0.0  # Ditto's λ: the personal run minimises F_k(v) + λ/2 ‖v − w_global‖²
    personal_steps: int = 0  # Ditto's personal run: 0, as many steps as the round's run
    # fedsa's closing round with fedsa_global=mean_b: the client reports its B, once, as
    # extras["local_lora_B"] (the server's evaluation-only reference model, server.closing).
    report_local: bool = False
    # The stamp of a run that keeps client state (client.state): the round (FitConfig.seed is a
    # hash of it), the run's id (32 hex digits) and the first round of each of its attempts
    # ("1,5": started at 1, resumed at 5). Unstamped: 0, "" and "".
    server_round: int = 0
    state_run: str = ""
    state_attempts: str = ""

    def to_header(self) -> dict[str, Any]:
        """The JSON-ready form that goes on the wire."""
        return dataclasses.asdict(self)

    @classmethod
    def from_header(cls, raw: Any, client_id: int) -> FitConfig:
        """Decode ``to_header``'s output, refusing unknown, missing and ill-typed keys.

        Raises:
            FitConfigError: naming the offending key and the client.
        """
        where = f"client {client_id}: instruction config"
        if not isinstance(raw, dict):
            raise FitConfigError(f"{where} is {type(raw).__name__}, expected an object")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(fields))
        if unknown:
            raise FitConfigError(f"{where} has unknown key {unknown[0]!r}")
        missing = [
            name
            for name, f in fields.items()
            if name not in raw and f.default is dataclasses.MISSING
        ]
        if missing:
            raise FitConfigError(f"{where} lacks key {missing[0]!r}")
        for name, value in raw.items():
            if not _has_type(value, hints[name]):
                raise FitConfigError(
                    f"{where} key {name!r} is {value!r}, expected {hints[name].__name__}"
                )
        return cls(**{name: hints[name](value) for name, value in raw.items()})


def shared_names(state: AdapterState, config: FitConfig) -> list[str]:
    """The keys of ``state`` that a reply to ``config`` carries, sorted: trained ∩ shared.

    The one answer to "what is sent" for the wire format (``engines.messages``), client-level
    DP's clip and noise (``privacy.mechanism``, ``server.privacy``) and secure aggregation's
    vector (``engines.secagg``), so that all of them cover exactly the same tensors. FFA-LoRA
    trains and sends B; FedSA-LoRA trains everything and sends A.

    Raises:
        ValueError: ``trainable`` or ``shared`` is not one of its values.
    """
    if config.trainable not in TRAINABLE:
        raise ValueError(f"trainable: unknown value {config.trainable!r}; use one of {TRAINABLE}")
    if config.shared not in SHARED:
        raise ValueError(f"shared: unknown value {config.shared!r}; use one of {SHARED}")
    return sorted(
        name
        for name in state
        if (config.trainable == "all" or ".lora_B." in name)
        and (config.shared == "all" or (config.shared == "lora_A" and ".lora_A." in name))
    )


def prefixed(prefix: str, state: AdapterState) -> dict[str, Tensor]:
    """``state`` with every key under ``prefix/``, to flatten several states into one file
    (a strategy's checkpoint, a client's stored state)."""
    return {f"{prefix}/{key}": value for key, value in state.items()}


def unprefixed(prefix: str, state: dict[str, Tensor]) -> AdapterState:
    """The entries of ``state`` under ``prefix/``, with the prefix removed."""
    start = f"{prefix}/"
    return {key[len(start) :]: value for key, value in state.items() if key.startswith(start)}


def _has_type(value: Any, annotation: type) -> bool:
    """JSON's view of a field type: bools are not numbers, and an int is a valid float."""
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


@dataclass
class FitInstruction:
    """What the server sends one client for one round (Flower's ``Message`` content, typed).

    ``state`` is the adapter the client starts from, at the client's own rank; ``config`` the
    scalars it obeys. ``extras`` holds named tensor side-channels, e.g. SCAFFOLD's
    ``server_control`` and ``client_control``.
    """

    client_id: int
    state: AdapterState
    config: FitConfig
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
class SecureSum:
    """What a secure-aggregation round gives the server: one sum, nothing per client."""

    clients: list[int]  # whose updates are in the sum (SecAgg does not hide who answered)
    delta_sum: AdapterState  # Σ w_i·Δ_i over the trained tensors, dequantized
    weight_sum: float  # Σ w_i (the number of clients under DP's uniform weights)
    unclipped_bits: float  # Σ of the clients' noised clip bits (adaptive clipping), else 0
    metrics: dict[str, Any] = field(default_factory=dict)  # bytes, quantization, dropouts


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
    dropped_clients: list[int] = field(default_factory=list)
    client_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    communication: dict[str, int] = field(default_factory=dict)
    aggregation: dict[str, Any] = field(default_factory=dict)
    system: dict[str, Any] = field(default_factory=dict)  # the simulated clock (server.clock)

    def to_json(self) -> dict[str, Any]:
        record = {
            "round": self.round,
            "selected_clients": self.selected_clients,
            "train_loss": {str(k): v for k, v in self.train_loss.items()},
            "num_examples": {str(k): v for k, v in self.num_examples.items()},
            "lr": self.lr,
            "eval": self.eval,
            "seconds": self.seconds,
            "dropped_clients": self.dropped_clients,
            "client_metrics": {str(k): v for k, v in self.client_metrics.items()},
            "communication": self.communication,
            "aggregation": self.aggregation,
        }
        if self.system:  # only with federation.system profiles: records are unchanged without
            record["system"] = self.system
        return record
