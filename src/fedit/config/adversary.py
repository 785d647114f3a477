"""Config sections for hostile clients: the simulated attack (``attack``), the defence (``robust``).

``fedit.client.attacks`` implements the attacks and ``fedit.robust`` the defences; the choices
here are their registries' names (a test keeps them in step).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedit.config.fields import check_choice, option

ATTACKS = (
    "none",
    "sign_flip",
    "scale",
    "gaussian",
    "alie",
    "label_flip",
    "backdoor",
    "inflate_count",
)
MODEL_ATTACKS = ("sign_flip", "scale", "gaussian", "alie")  # change the reply
DATA_ATTACKS = ("label_flip", "backdoor")  # change the training data
# What an inflate_count reply carries with its claimed count: the client's honest update, or a
# forgery it can make alone (alie needs the server's view, a data attack its own training set).
INFLATED_KINDS = ("none", "sign_flip", "scale", "gaussian")
DEFENCES = (
    "none",
    "norm_bound",
    "krum",
    "multi_krum",
    "geometric_median",
    "trimmed_mean",
    "median",
)


@dataclass
class AttackConfig:
    """Simulated malicious clients (docs/robustness.md). Attackers are named in metrics.jsonl."""

    kind: str = option(
        "none",
        "attack: none, sign_flip (send global - λΔ), scale (global + λΔ), gaussian (random "
        "update of an honest norm), alie (mean - z·std of the honest updates; omniscient), "
        "label_flip (responses swapped between categories), backdoor (trigger -> target), "
        "inflate_count (reports attack.claimed_examples examples, with attack.inflated_kind's "
        "update)",
    )
    clients: list[int] | None = option(
        None, "ids of the malicious clients (in-process engine); or use attack.fraction"
    )
    fraction: float = option(
        0.0, "fraction of clients that are malicious, drawn from seed (in-process engine)"
    )
    magnitude: float | None = option(
        None,
        "λ of sign_flip and scale (also as attack.inflated_kind); default 1.0 for sign_flip, "
        "10.0 for scale",
    )
    z: float | None = option(
        None,
        "alie: z in mean - z·std; default Baruch et al.'s z_max for the round's n and attackers",
    )
    poison_fraction: float | None = option(
        None,
        "label_flip / backdoor: fraction of the attacker's examples poisoned; "
        "default 1.0 for label_flip, 0.5 for backdoor",
    )
    trigger: str = option("cf", "backdoor: phrase put in front of a poisoned instruction")
    target: str = option("ACCESS GRANTED", "backdoor: the response a poisoned example teaches")
    claimed_examples: int = option(
        1_000_000_000,
        "inflate_count: the num_examples the attacker reports in its reply, whatever it trained on",
    )
    inflated_kind: str = option(
        "scale",
        "inflate_count: the update its reply carries: none (its honest one), sign_flip, scale or "
        "gaussian. Default scale, the deviant update the defences are there to bound, so a run "
        "shows whether a claimed count lets it through",
    )

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def forgery(self) -> str:
        """The kind of update the reply carries: attack.inflated_kind under inflate_count."""
        return self.inflated_kind if self.kind == "inflate_count" else self.kind

    def lam(self) -> float:
        """λ of sign_flip / scale, with its per-kind default."""
        if self.magnitude is not None:
            return self.magnitude
        return 10.0 if self.forgery == "scale" else 1.0

    def poisoned_share(self) -> float:
        """The poisoned fraction of a data attack, with its per-kind default."""
        if self.poison_fraction is not None:
            return self.poison_fraction
        return 1.0 if self.kind == "label_flip" else 0.5

    def validate(self, num_clients: int) -> list[str]:
        problems = check_choice("attack.kind", self.kind, ATTACKS)
        if self.clients is not None and self.fraction:
            problems.append("attack.clients: set attack.clients or attack.fraction, not both")
        for client in self.clients or []:
            if not 0 <= client < num_clients:
                problems.append(f"attack.clients: {client} is not in [0, federation.num_clients)")
        if not 0 <= self.fraction < 1:
            problems.append(f"attack.fraction: must be in [0, 1), got {self.fraction}")
        if self.poison_fraction is not None and not 0 < self.poison_fraction <= 1:
            problems.append(
                f"attack.poison_fraction: must be in (0, 1], got {self.poison_fraction}"
            )
        if self.magnitude is not None and self.magnitude <= 0:
            problems.append(f"attack.magnitude: must be > 0, got {self.magnitude}")
        if self.kind == "backdoor" and not (self.trigger.strip() and self.target.strip()):
            problems.append("attack.trigger / attack.target: backdoor needs both, non-empty")
        if self.claimed_examples <= 0:
            problems.append(f"attack.claimed_examples: must be > 0, got {self.claimed_examples}")
        problems += check_choice("attack.inflated_kind", self.inflated_kind, INFLATED_KINDS)
        return problems


@dataclass
class RobustConfig:
    """A defence applied to the replies before the strategy aggregates them."""

    method: str = option(
        "none",
        "defence on the products B·A: none, norm_bound, krum, multi_krum, geometric_median; "
        "or per coordinate of the factors (ill-posed for LoRA, for comparison): trimmed_mean, "
        "median",
    )
    num_byzantine: int = option(1, "krum / multi_krum: f, the attackers tolerated per round")
    norm_bound: float | None = option(
        None, "norm_bound: clip each ||ΔW_i||_F to this; default robust.norm_multiple × median"
    )
    norm_multiple: float = option(
        2.0, "norm_bound without a fixed bound: clip to this multiple of the round's median norm"
    )
    trim_fraction: float = option(
        0.2, "trimmed_mean: fraction β of values dropped at each end, per coordinate"
    )
    gram_precision: str = option(
        "float32",
        "float32 or float64 for the big Gram products of the factors' differences from the "
        "global adapter (float32: distances to about 1e-7 relative, about 1.5x faster; mixed "
        "client ranks always use float64)",
    )
    reject_factor: float = option(
        2.0,
        "geometric_median: a client farther from the median than this × the median distance "
        "is reported as rejected (its Weiszfeld weight is already small)",
    )

    def validate(self) -> list[str]:
        problems = check_choice("robust.method", self.method, DEFENCES)
        if self.num_byzantine < 0:
            problems.append(f"robust.num_byzantine: must be >= 0, got {self.num_byzantine}")
        if self.norm_bound is not None and self.norm_bound <= 0:
            problems.append(f"robust.norm_bound: must be > 0, got {self.norm_bound}")
        if self.norm_multiple <= 0:
            problems.append(f"robust.norm_multiple: must be > 0, got {self.norm_multiple}")
        if not 0 <= self.trim_fraction < 0.5:
            problems.append(f"robust.trim_fraction: must be in [0, 0.5), got {self.trim_fraction}")
        problems += check_choice(
            "robust.gram_precision", self.gram_precision, ("float32", "float64")
        )
        if self.reject_factor <= 1:
            problems.append(f"robust.reject_factor: must be > 1, got {self.reject_factor}")
        return problems


# Strategies whose aggregation a defence cannot feed: SCAFFOLD averages control variates with
# the adapters, and a defence's weights or selection would leave the two inconsistent.
UNDEFENDABLE_STRATEGIES = ("scaffold",)


def combination_problems(
    attack: AttackConfig,
    robust: RobustConfig,
    strategy: str,
    mixed_ranks: bool,
    engine: str,
    clients_per_round: int,
) -> list[str]:
    """Attack/defence settings that cannot work with the rest of the experiment.

    Args:
        clients_per_round: how many clients a round selects (``strategy.selection.num_selected``).
    """
    problems = []
    method = robust.method
    if method != "none" and strategy in UNDEFENDABLE_STRATEGIES:
        problems.append(
            f"robust.method={method} cannot feed strategy.name={strategy}: its control "
            "variates are averaged with the adapters and would no longer match them"
        )
    if method in ("trimmed_mean", "median") and mixed_ranks:
        problems.append(
            f"robust.method={method} works per coordinate of the factors, which needs one "
            "rank; lora.client_ranks differ (use krum, multi_krum or geometric_median)"
        )
    if attack.kind == "alie" and mixed_ranks:
        problems.append("attack.kind=alie works per coordinate of the factors: one rank only")
    if method in ("krum", "multi_krum"):
        needed = 2 * robust.num_byzantine + 3
        if clients_per_round < needed:
            problems.append(
                f"robust.method={method} with robust.num_byzantine={robust.num_byzantine} "
                f"needs at least {needed} clients per round; federation settings select "
                f"{clients_per_round}"
            )
    if engine == "flower" and (attack.clients is not None or attack.fraction):
        problems.append(
            "attack.clients / attack.fraction: on engine=flower a site is made malicious by "
            "its node config (malicious=true); unset them"
        )
    if attack.active and engine != "flower" and not (attack.clients or attack.fraction):
        problems.append(f"attack.kind={attack.kind}: name attack.clients or attack.fraction")
    return problems
