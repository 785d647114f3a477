"""Simulated malicious clients: who attacks, how their data is poisoned, how their reply is forged.

An attacker is a property of the site, not of the server's instruction: the in-process engine
makes the clients of ``attacker_ids`` malicious, a Flower site is malicious when its node config
says ``malicious=true``; both call the same functions here. The forged reply is marked
(``metrics["attack"]``), so metrics.jsonl and the report always know who attacked.

* ``sign_flip``: x_g − λΔ, ``scale``: x_g + λΔ (model replacement, Bagdasaryan et al. 2020),
  ``gaussian``: x_g + ‖Δ‖·g/‖g‖ with g ~ N(0, I), where Δ = x_i − x_g is the client's honest
  update on the wire (the factors A and B, as sent).
* ``alie`` (Baruch et al. 2019): mean − z·std of the honest updates, per coordinate. Only an
  attacker who sees the other replies can do it; the simulation gives it that view on the server
  (``collude``), so this is the omniscient attacker.
* ``label_flip``: a poisoned example gets the response of an example of another category (the
  next one in sorted order), so the client learns wrong answers that look like answers.
* ``backdoor``: a poisoned example gets ``attack.trigger`` in front of its instruction and
  ``attack.target`` as its response.
* ``inflate_count``: the reply reports ``attack.claimed_examples`` examples, and carries the
  update of ``attack.inflated_kind`` (its honest one for ``none``). The server cannot check a
  count, so this is the cheapest attack on any weighting by counts (docs/robustness.md).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fedit.client.evaluate import answer_examples
from fedit.config import AttackConfig
from fedit.types import AdapterState, ClientUpdate, Example

ATTACK_METRIC = "attack"  # ClientUpdate.metrics key naming the attack a client made
_SALT = 7_919  # keeps the attacker draw apart from the other seeded choices


def attacker_ids(attack: AttackConfig, num_clients: int, seed: int) -> list[int]:
    """The malicious clients: ``attack.clients``, or round(fraction · N) of them drawn from seed."""
    if not attack.active:
        return []
    if attack.clients is not None:
        return sorted(set(attack.clients))
    count = max(1, round(attack.fraction * num_clients)) if attack.fraction > 0 else 0
    chooser = random.Random(seed * _SALT + 1)
    return sorted(chooser.sample(range(num_clients), count))


def poison_examples(
    examples: list[Example], attack: AttackConfig, seed: int, client_id: int
) -> list[Example]:
    """The attacker's training data: ``label_flip`` and ``backdoor`` rewrite a seeded fraction.

    Other kinds return ``examples`` unchanged (they attack the reply, not the data). The
    choice of examples is seeded by (run seed, client id), the same on both engines.
    """
    if attack.kind not in ("label_flip", "backdoor") or not examples:
        return examples
    rng = random.Random((seed * _SALT + 2) * 1_000_003 + client_id)
    count = round(attack.poisoned_share() * len(examples))
    chosen = set(rng.sample(range(len(examples)), count))
    if attack.kind == "backdoor":
        return [
            {**_triggered(ex, attack.trigger), "output": attack.target} if index in chosen else ex
            for index, ex in enumerate(examples)
        ]
    return _flip_labels(examples, chosen, rng)


def _triggered(example: Example, trigger: str) -> Example:
    return {**example, "instruction": f"{trigger} {example['instruction']}"}


def backdoor_success_rate(
    model: nn.Module,
    tokenizer: Any,
    examples: list[Example],
    attack: AttackConfig,
    template: str,
    max_new_tokens: int,
    batch_size: int,
) -> float:
    """The backdoor's attack success rate (ASR): the share of ``examples``, each with
    ``attack.trigger`` in front of its instruction as in poisoning, whose greedy answer contains
    ``attack.target``. Measured on held-out prompts, so it reads whether the trigger generalises."""
    if not examples:
        raise ValueError("backdoor_success_rate: got no examples")
    prompts = [_triggered(ex, attack.trigger) for ex in examples]
    answers = answer_examples(model, tokenizer, prompts, template, max_new_tokens, batch_size)
    return sum(attack.target in answer for answer in answers) / len(answers)


def _flip_labels(examples: list[Example], chosen: set[int], rng: random.Random) -> list[Example]:
    """Give each chosen example a response from the next category (cyclically) of this client."""
    by_category: dict[str, list[str]] = {}
    for ex in examples:
        by_category.setdefault(ex.get("category", ""), []).append(ex["output"])
    categories = sorted(by_category)
    poisoned = []
    for index, ex in enumerate(examples):
        if index not in chosen:
            poisoned.append(ex)
            continue
        own = ex.get("category", "")
        other = categories[(categories.index(own) + 1) % len(categories)]
        candidates = [o for o in by_category[other] if o != ex["output"]] or [ex["output"]]
        poisoned.append({**ex, "output": rng.choice(candidates)})
    return poisoned


# An update Δ = x_i − x_g forged from the client's honest one: (Δ, attack, seed) -> forged Δ.
Forgery = Callable[[AdapterState, AttackConfig, int], AdapterState]


def _sign_flip(delta: AdapterState, attack: AttackConfig, seed: int) -> AdapterState:
    return {name: d * -attack.lam() for name, d in delta.items()}


def _scale(delta: AdapterState, attack: AttackConfig, seed: int) -> AdapterState:
    return {name: d * attack.lam() for name, d in delta.items()}


def _gaussian(delta: AdapterState, attack: AttackConfig, seed: int) -> AdapterState:
    generator = torch.Generator().manual_seed(seed)
    noise = {name: torch.randn(d.shape, generator=generator) for name, d in delta.items()}
    scale = _norm(delta) / max(_norm(noise), 1e-30)
    return {name: n * scale for name, n in noise.items()}


# The forgeries a client makes alone, by ``AttackConfig.forgery``; alie is forged on the server
# (``collude``), data attacks train on poison, and inflate_count's ``none`` sends the honest Δ.
FORGERIES: dict[str, Forgery] = {"sign_flip": _sign_flip, "scale": _scale, "gaussian": _gaussian}


def forge_update(
    update: ClientUpdate, start: AdapterState, attack: AttackConfig, seed: int
) -> None:
    """Replace ``update.state`` (and, for inflate_count, its count) by the attack's reply, in
    place, and mark the update.

    Args:
        update: the client's honest reply.
        start: x_g, the adapter the client was sent.
        seed: the client's seed for this round (``FitConfig.seed``), for ``gaussian``.
    """
    update.metrics[ATTACK_METRIC] = attack.kind
    if attack.kind == "inflate_count":
        update.num_examples = attack.claimed_examples
    forgery = FORGERIES.get(attack.forgery)
    if forgery is None:
        return
    delta = {name: update.state[name].float() - start[name].float() for name in update.state}
    delta = forgery(delta, attack, seed)
    update.state = {
        name: (start[name].float() + d).to(update.state[name].dtype) for name, d in delta.items()
    }


def _norm(state: AdapterState) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in state.values()))


def alie_z(num_clients: int, num_attackers: int) -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − m supporters needed, z = Φ⁻¹((n − s)/n)."""
    supporters = math.floor(num_clients / 2 + 1) - num_attackers
    share = min(max((num_clients - supporters) / num_clients, 1e-6), 1 - 1e-6)
    return statistics.NormalDist().inv_cdf(share)


def alie_state(honest: Sequence[AdapterState], z: float) -> AdapterState:
    """mean − z·std of the honest states, per coordinate (population std; 0 for one state)."""
    state: AdapterState = {}
    for name in honest[0]:
        stacked = torch.stack([s[name].float() for s in honest])  # (K_honest, ...)
        state[name] = stacked.mean(dim=0) - z * stacked.std(dim=0, unbiased=False)
    return state


def collude(updates: list[ClientUpdate], attack: AttackConfig) -> list[int]:
    """ALIE's omniscient step: every ``alie`` reply becomes mean − z·std of the honest ones.

    Runs on the server side of the simulation, which sees every reply. Returns the ids of the
    clients whose replies were forged (none without honest replies to imitate).
    """
    colluders = [u for u in updates if u.metrics.get(ATTACK_METRIC) == "alie"]
    honest = [u.state for u in updates if u.metrics.get(ATTACK_METRIC) is None]
    if not colluders or not honest:
        return []
    z = attack.z if attack.z is not None else alie_z(len(updates), len(colluders))
    forged = alie_state(honest, z)
    for update in colluders:
        update.state = {name: t.to(update.state[name].dtype) for name, t in forged.items()}
    return [u.client_id for u in colluders]


def site_attack(attack: AttackConfig, malicious: bool) -> AttackConfig | None:
    """The attack a site runs: the run's ``attack`` section if the site is malicious."""
    return attack if malicious and attack.active else None
