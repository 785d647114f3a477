"""One client's round: obey the server's instruction, train, and build the reply.

Both engines call ``fit_client`` and nothing else between unpacking an instruction and packing
the reply: it switches to the adapter of the instruction's rank (and back), turns the
``FitConfig`` into a seeded ``LocalObjective`` run of ``train_local`` and adds what the strategy
asked for to the ``ClientUpdate``. The instruction decides the client's round, together with
what the client itself kept from its earlier rounds (``client.state``: SCAFFOLD's c_i,
Ditto's personal adapter, which ``client.ditto`` trains after the round's own run; fedsa's
B_i, ``client.fedsa``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel

from fedit.client.attacks import forge_update
from fedit.client.ditto import train_personal
from fedit.client.dpo import DPOLoss
from fedit.client.dpsgd import ExamplePrivacy, private_steps
from fedit.client.fedsa import OwnB
from fedit.client.loss import StepLoss
from fedit.client.personal import close_client
from fedit.client.site_policy import SitePolicy, public_reply
from fedit.client.state import SCAFFOLD_CONTROL, ClientStateStore, KeptState
from fedit.client.train import LocalObjective, model_pad_token_id, train_local
from fedit.config import AttackConfig, Config
from fedit.model.lora import add_rank_adapter
from fedit.privacy.mechanism import privatize_update
from fedit.types import (
    CONTROL_DELTA,
    AdapterState,
    ClientUpdate,
    FitInstruction,
)

DEFAULT_ADAPTER = "default"  # peft's name for the adapter apply_lora creates (rank lora.r)


@contextlib.contextmanager
def _adapter_of_rank(model: PeftModel, cfg: Config, rank: int) -> Iterator[None]:
    """Train a second adapter of ``rank`` (``lora.client_ranks``), then switch back."""
    if rank == cfg.lora.r:
        yield
        return
    model.set_adapter(add_rank_adapter(model, cfg.lora, rank))
    try:
        yield
    finally:
        model.set_adapter(DEFAULT_ADAPTER)


@dataclass
class ClientControl:
    """SCAFFOLD at the client: c from the server, c_i from the client's own store."""

    kept: KeptState  # all the client keeps; advance replaces only SCAFFOLD's namespace
    server: AdapterState  # c
    own: AdapterState  # c_i: zeros until the client first trains

    @classmethod
    def load(cls, instruction: FitInstruction, kept: KeptState) -> ClientControl:
        """c from the instruction, c_i from the newest committed state."""
        server = instruction.extras["server_control"]
        zeros = {name: torch.zeros_like(t) for name, t in server.items()}
        return cls(kept, server, kept.get(SCAFFOLD_CONTROL) or zeros)

    def correction(self) -> AdapterState:
        """c − c_i, added to every gradient."""
        return {name: self.server[name] - self.own[name] for name in self.server}

    def advance(self, instruction: FitInstruction, update: ClientUpdate) -> AdapterState:
        """Δc_i = (x − y_i) / Σ_t η_t − c; keeps c_i⁺ = c_i + Δc_i and returns Δc_i."""
        lr_sum = update.metrics["lr_sum"]
        delta = {
            name: (instruction.state[name] - update.state[name]) / lr_sum - self.server[name]
            for name in self.server
        }
        self.kept.put(SCAFFOLD_CONTROL, {name: self.own[name] + delta[name] for name in delta})
        return delta


def fit_client(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    progress: Callable[[int, int, float], None] | None = None,
    attack: AttackConfig | None = None,
    policy: SitePolicy | None = None,
    store: ClientStateStore | None = None,
) -> ClientUpdate:
    """Train from ``instruction.state`` as ``instruction.config`` says.

    Args:
        model: The peft model with the run's LoRA (``apply_lora(base, cfg.lora, cfg.seed)``).
        examples: The client's tokenized training examples (``TokenizedPair``s for DPO).
        cfg: The experiment (its ``train``, ``dpo`` and ``lora`` sections are used).
        instruction: Adapter, ``FitConfig`` and tensor extras from the server.
        progress: Step callback, as for ``train_local``.
        attack: set on a malicious site (``client.attacks``): the reply is forged and marked.
        policy: the site's own privacy floor and noise source (``client.site_policy``).
        store: where the client keeps its state between rounds (``client.state``); needed
            by SCAFFOLD, which reads c_i from it and saves c_i + Δc_i before replying, by
            Ditto, which keeps its personal adapter there (``client.ditto``), by fedsa, which
            trains from its own B_i and saves the new one (``client.fedsa``), and by
            personalization's closing phase, which publishes the client's own model there
            (``client.personal``).

    Under ``dp_level=client`` the reply is the clipped (and, if told, noised) update
    (``privacy.mechanism.privatize_update``); under ``example`` the local run is DP-SGD
    (``client.dpsgd``). Either way the site draws every noise and batch from its own
    ``NoiseSource``, and the reply carries nothing per-client but the update
    (``site_policy.public_reply``).

    The store gets the raw new state before privatisation and forging, so it never holds a
    noised or forged tensor, and a reply always means that its state was saved. The state
    advances whenever the client trains, whether or not the server aggregates the reply.

    Raises:
        InstructionRefusedError: the instruction's privacy is weaker than the site's floor.
        StampError: a SCAFFOLD, Ditto or fedsa instruction without a valid stamp
            (``client.state.Stamp``).

    Returns:
        The update; with SCAFFOLD its ``extras["control_delta"]`` is
        ``Δc_i = (x − y_i) / Σ_t η_t − c`` (Karimireddy et al. 2020, option II).
    """
    config = instruction.config
    policy = policy or SitePolicy()
    policy.check(config, instruction.client_id)
    if config.phase == "close":  # after the last round: the client's own model, nothing sent
        with _adapter_of_rank(model, cfg, config.rank):
            update = close_client(model, examples, cfg, instruction, store, progress)
        return public_reply(update, config)
    noise = policy.noise_source(config.seed)
    objective = LocalObjective(proximal_mu=config.proximal_mu, trainable=config.trainable)
    kept = control = None
    if config.scaffold or config.personalization == "ditto":  # one file holds both
        kept = KeptState.open(instruction, store, "SCAFFOLD" if config.scaffold else "ditto")
    if config.scaffold and kept is not None:
        control = ClientControl.load(instruction, kept)
        objective.scaffold_correction = control.correction()
    start, own_b = instruction.state, None
    if config.personalization == "fedsa":  # the received A with the client's own B_i
        own_b = OwnB.load(instruction, store)
        start = own_b.start(instruction.state)
    example_privacy = None
    if config.dp_level == "example":
        example_privacy = ExamplePrivacy(config.dp_clip_norm, config.dp_noise_multiplier, noise)
    with _adapter_of_rank(model, cfg, config.rank):
        update = train_local(
            model,
            examples,
            cfg.train,
            client_id=instruction.client_id,
            lr=config.lr,
            seed=config.seed,
            global_state=start,
            progress=progress,
            objective=objective,
            step_loss=objective_loss(model, cfg),
            steps=private_steps(example_privacy) if example_privacy else None,
        )
        if kept is not None and config.personalization == "ditto":  # on the same adapter slot
            personal_loss = objective_loss(model, cfg)
            train_personal(model, examples, cfg, instruction, kept, update, personal_loss, progress)
    if control is not None:
        update.extras[CONTROL_DELTA] = control.advance(instruction, update)
    if kept is not None:  # saved raw, before the reply is privatised or forged
        kept.save()
    # fedsa never shares a run with SCAFFOLD or Ditto (config/personalization.py refuses it),
    # so its B_i has the state file to itself
    if own_b is not None:  # the raw B_i, before privatisation or forging; only A is sent
        own_b.save(instruction.client_id, update.state)
    if config.dp_level == "client":
        update = privatize_update(update, instruction.state, config, noise)
    update = public_reply(update, config)
    if attack is not None:  # after the honest privatisation: an attacker sends what it likes
        forge_update(update, instruction.state, attack, config.seed)
    return update


def objective_loss(model: PeftModel, cfg: Config) -> StepLoss | None:
    """What the local run minimises: ``DPOLoss`` for ``train.objective=dpo``, else the default
    (next-token loss on the responses)."""
    if cfg.train.objective != "dpo":
        return None
    train = cfg.train
    return DPOLoss(cfg.dpo, model_pad_token_id(model), train.autocast, train.micro_batch_size)
