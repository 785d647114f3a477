"""One client's round: obey the server's instruction, train, and build the reply.

Both engines call ``fit_client`` and nothing else between unpacking an instruction and packing
the reply: it switches to the adapter of the instruction's rank (and back), turns the
``FitConfig`` into a seeded ``LocalObjective`` run of ``train_local`` and adds what the strategy
asked for to the ``ClientUpdate``. The instruction alone decides the client's round.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from peft import PeftModel

from fedit.client.attacks import forge_update
from fedit.client.dpo import DPOLoss
from fedit.client.dpsgd import ExamplePrivacy, private_steps
from fedit.client.loss import StepLoss
from fedit.client.site_policy import SitePolicy, public_reply
from fedit.client.train import LocalObjective, model_pad_token_id, train_local
from fedit.config import AttackConfig, Config
from fedit.model.lora import add_rank_adapter
from fedit.privacy.mechanism import privatize_update
from fedit.types import CONTROL_DELTA, AdapterState, ClientUpdate, FitInstruction

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


def fit_client(
    model: PeftModel,
    examples: Sequence[Any],
    cfg: Config,
    instruction: FitInstruction,
    progress: Callable[[int, int, float], None] | None = None,
    attack: AttackConfig | None = None,
    policy: SitePolicy | None = None,
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

    Under ``dp_level=client`` the reply is the clipped (and, if told, noised) update
    (``privacy.mechanism.privatize_update``); under ``example`` the local run is DP-SGD
    (``client.dpsgd``). Either way the site draws every noise and batch from its own
    ``NoiseSource``, and the reply carries nothing per-client but the update
    (``site_policy.public_reply``).

    Raises:
        InstructionRefusedError: the instruction's privacy is weaker than the site's floor.

    Returns:
        The update; with SCAFFOLD its ``extras["control_delta"]`` is
        ``Δc_i = (x − y_i) / Σ_t η_t − c`` (Karimireddy et al. 2020, option II).
    """
    config = instruction.config
    policy = policy or SitePolicy()
    policy.check(config, instruction.client_id)
    noise = policy.noise_source(config.seed)
    objective = LocalObjective(proximal_mu=config.proximal_mu, trainable=config.trainable)
    server_control: AdapterState = {}
    if config.scaffold:
        server_control = instruction.extras["server_control"]
        client_control = instruction.extras["client_control"]
        objective.scaffold_correction = {
            name: server_control[name] - client_control[name] for name in server_control
        }
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
            global_state=instruction.state,
            progress=progress,
            objective=objective,
            step_loss=objective_loss(model, cfg),
            steps=private_steps(example_privacy) if example_privacy else None,
        )
    if server_control:
        lr_sum = update.metrics["lr_sum"]
        update.extras[CONTROL_DELTA] = {
            name: (instruction.state[name] - update.state[name]) / lr_sum - server_control[name]
            for name in server_control
        }
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
