"""Config for personalization: ``personalization.*`` and what it does not combine with.

``personalization.method`` gives every client a model of its own beside the global adapter
(docs/personalization.md): ``finetune`` (the global adapter fine-tuned on the client's data
after the last round), ``fedsa`` (FedSA-LoRA: A shared and averaged, each client's B kept at the
client) or ``ditto`` (Ditto: a personal adapter trained towards the global one with λ). Each
refusal below names the key and says what the combination would break.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedit.config.fields import check_choice, option

if TYPE_CHECKING:
    from fedit.config.schema import Config

METHODS = ("none", "finetune", "fedsa", "ditto")
FEDSA_GLOBALS = ("auto", "mean_b", "none")
# Defences that judge the product B·A of each update (robust/gram.py); under fedsa every
# client's B is the server's initial one, so every client would look the same to them.
PRODUCT_DEFENCES = ("krum", "multi_krum", "norm_bound", "geometric_median")


@dataclass
class PersonalizationConfig:
    """A model per client beside the global adapter (docs/personalization.md)."""

    method: str = option(
        "none",
        "none (one global adapter, FedIT), finetune (after the last round, each client "
        "fine-tunes the final global adapter on its own data and keeps the result), fedsa "
        "(FedSA-LoRA: the clients share and average A, each keeps its own B) or ditto (each "
        "round, after FedIT's run, each client also trains its own adapter towards the global "
        "one with λ = personalization.lam; doubles client compute)",
    )
    local_steps: int = option(
        0, "finetune: steps each client fine-tunes after the last round; 0: train.local_steps"
    )
    lr: float | None = option(
        None,
        "finetune and ditto's personal run: learning rate (default: the round's, i.e. the "
        "last round's for finetune)",
    )
    lam: float = option(
        0.1,
        "ditto: λ, the weight of λ/2·‖v − w‖² that pulls a client's personal adapter v towards "
        "the global one w (Ditto's --lam; 0: local training alone)",
    )
    personal_steps: int = option(
        0, "ditto: steps of the personal run each round; 0: as many as the global run's"
    )
    fedsa_global: str = option(
        "auto",
        "fedsa: the server's reference model after the last round: mean_b (the global A with "
        "the clients' mean B, each client reporting its B once, for evaluation only), none (no "
        "B leaves a client; no server-side score) or auto (mean_b, but none under "
        "privacy.level=client or secure aggregation)",
    )

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    def validate(self) -> list[str]:
        key = "personalization"
        problems = check_choice(f"{key}.method", self.method, METHODS)
        problems += check_choice(f"{key}.fedsa_global", self.fedsa_global, FEDSA_GLOBALS)
        if self.local_steps < 0:
            problems.append(f"{key}.local_steps: must be >= 0, got {self.local_steps}")
        if self.personal_steps < 0:
            problems.append(f"{key}.personal_steps: must be >= 0, got {self.personal_steps}")
        if self.lr is not None and self.lr <= 0:
            problems.append(f"{key}.lr: must be > 0, got {self.lr}")
        if self.lam < 0:
            problems.append(f"{key}.lam: must be >= 0, got {self.lam}")
        return problems

    def reports_b(self, private: bool) -> bool:
        """Whether fedsa's clients report their B at close (``fedsa_global`` resolved)."""
        if self.method != "fedsa" or self.fedsa_global == "none":
            return False
        return self.fedsa_global == "mean_b" or not private


def personalization_problems(cfg: Config) -> list[str]:
    """What ``personalization.method`` cannot be combined with, one line each."""
    method = cfg.personalization.method
    if method == "none":
        return []
    key = f"personalization.method={method}"
    strategy = cfg.strategy.name
    mean_b = method == "fedsa" and cfg.personalization.fedsa_global == "mean_b"
    refusals: list[tuple[bool, str]] = [
        (
            strategy == "fedbuff" and method in ("fedsa", "ditto"),
            f"strategy.name=fedbuff: not with {key}; buffered aggregation has no round order "
            "for a client's kept state (finetune, after the last round, works)",
        ),
        (
            strategy == "exact" and method == "fedsa",
            f"strategy.name=exact: not with {key}; exact averages the products B·A, and fedsa's "
            "clients send no B",
        ),
        (
            strategy == "scaffold" and method == "fedsa",
            f"strategy.name=scaffold: not with {key}; c − c_i would correct a B that is never "
            "averaged (ditto works with scaffold)",
        ),
        (
            strategy == "ffa_lora" and method == "fedsa",
            f"strategy.name=ffa_lora: not with {key}; FFA-LoRA freezes A and shares B, fedsa "
            "shares A, so nothing would be both trained and shared",
        ),
        (
            len({cfg.lora.r, *(cfg.lora.client_ranks or [])}) > 1 and method == "fedsa",
            f"lora.client_ranks: not with {key}; the global A has one shape, and a client's B "
            "pairs with all of its rows",
        ),
        (
            cfg.robust.method in PRODUCT_DEFENCES and method == "fedsa",
            f"robust.method={cfg.robust.method}: not with {key}; it judges each update's B·A, "
            "and with the server's B every client looks the same; use trimmed_mean or median",
        ),
        (
            mean_b and cfg.privacy.level == "client",
            "personalization.fedsa_global=mean_b: not with privacy.level=client; each client's "
            "B would be released unclipped and un-noised; use fedsa_global=none",
        ),
        (
            mean_b and cfg.privacy.secure_aggregation,
            "personalization.fedsa_global=mean_b: not with privacy.secure_aggregation; each "
            "client's B would travel beside the masked sum, in the clear; use fedsa_global=none",
        ),
        (
            cfg.privacy.level == "example" and method in ("finetune", "ditto"),
            f"privacy.level=example: not with {key}; the personal run would train outside the "
            "accountant's steps (fedsa works: its B is trained by the accounted DP-SGD run)",
        ),
    ]
    return [line for refused, line in refusals if refused]


def compare_rows_problems(cfg: Config) -> list[str]:
    """What ``compare.personalization`` needs, one line each."""
    rows = cfg.compare.personalization
    if not rows:
        return []
    key = f"compare.personalization={rows}"
    refusals = [
        (
            cfg.data.client_test_fraction <= 0,
            f"{key}: the rows are scored on each client's own test share; set "
            "data.client_test_fraction (e.g. 0.2)",
        ),
        (
            cfg.engine == "flower",
            f"{key}: not with engine=flower; the personal models stay at the sites, where "
            "compare cannot score them",
        ),
        (
            cfg.personalization.method != "none",
            f"{key}: compare's FedIT row must be the global FedIT run; leave "
            "personalization.method=none (the rows train their own methods)",
        ),
    ]
    return [line for refused, line in refusals if refused]
