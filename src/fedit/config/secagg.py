"""Config for secure aggregation: ``privacy.secure_aggregation`` and ``privacy.secagg.*``.

What it refuses, and why, is written here once: every refusal names the key and says which
per-client quantity the combination would need that SecAgg hides from the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedit.config.fields import option

if TYPE_CHECKING:
    from fedit.config.schema import Config

SECAGG_ENGINES = ("flower", "flower-simulation")
MIN_CLIENTS = 3  # with two, each learns the other's update from the sum
MODULUS_BITS = 32  # masked vectors are summed modulo 2^32 (uint32 on the wire)
# Strategies whose aggregate is a function of the (weighted) sum of the clients' updates.
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "ffa_lora")


@dataclass
class SecAggConfig:
    """SecAgg+ (Bell et al. 2020): masks that cancel in the sum, quantization, dropout recovery."""

    bits: int = option(
        24,
        "quantization levels 2^bits over [-clipping_range, clipping_range]; clients x 2^bits "
        "must stay below 2^32 so the sum cannot wrap",
    )
    clipping_range: float | None = option(
        None,
        "per-coordinate range of a client's (weighted) update; default 0.25, or under DP "
        "C + 8 x the client's noise std each round",
    )
    reconstruction_threshold: int | None = option(
        None,
        "t: shares needed to recover a secret; the server with fewer than t colluding clients "
        "learns only the sum; default a majority of the k neighbours and the client itself",
    )
    neighbours: int | None = option(
        None, "SecAgg+ neighbourhood size k (each client masks with k others); default all"
    )
    max_weight: float | None = option(
        None,
        "examples that weigh 1 in the weighted mean (w = examples / max_weight); default the "
        "largest client's count (ignored under DP: uniform weights)",
    )

    def validate(self) -> list[str]:
        problems = []
        if not 1 <= self.bits <= 30:
            problems.append(f"privacy.secagg.bits: must be in [1, 30], got {self.bits}")
        if self.clipping_range is not None and not self.clipping_range > 0:
            problems.append(
                f"privacy.secagg.clipping_range: must be > 0, got {self.clipping_range}"
            )
        if self.reconstruction_threshold is not None and self.reconstruction_threshold < 2:
            problems.append(
                "privacy.secagg.reconstruction_threshold: must be >= 2 (one share reveals the "
                f"secret), got {self.reconstruction_threshold}"
            )
        if self.neighbours is not None and self.neighbours < 2:
            problems.append(f"privacy.secagg.neighbours: must be >= 2, got {self.neighbours}")
        if self.max_weight is not None and not self.max_weight > 0:
            problems.append(f"privacy.secagg.max_weight: must be > 0, got {self.max_weight}")
        return problems


def neighbourhood_size(secagg: SecAggConfig, clients: int) -> int:
    """k: the neighbours each client masks with (all the others by default)."""
    return min(secagg.neighbours or clients - 1, clients - 1)


def reconstruction_threshold(secagg: SecAggConfig, clients: int) -> int:
    """t: by default a majority of the k + 1 holders of a self-mask seed's shares (the k
    neighbours and the client itself)."""
    k = neighbourhood_size(secagg, clients)
    return secagg.reconstruction_threshold or (k + 1) // 2 + 1


def secagg_problems(cfg: Config) -> list[str]:
    """What ``privacy.secure_aggregation=true`` cannot be combined with, one line each."""
    privacy = cfg.privacy
    if not privacy.secure_aggregation:
        return []
    key = "privacy.secure_aggregation=true"
    problems = []
    if cfg.engine not in SECAGG_ENGINES:
        problems.append(
            f"engine={cfg.engine}: {key} needs engine=flower or engine=flower-simulation; "
            "in one process every update is in the server's memory, so nothing is hidden"
        )
    if cfg.strategy.name not in SECAGG_STRATEGIES:
        why = {
            "exact": "its SVD needs each client's factors, and SecAgg gives only their sum",
            "scaffold": "its control variates would travel beside the masked sum, in the clear",
        }.get(cfg.strategy.name, "it needs more than the sum of the updates")
        problems.append(
            f"strategy.name={cfg.strategy.name}: refused with {key}; {why}; use one of "
            + ", ".join(SECAGG_STRATEGIES)
        )
    if len({cfg.lora.r, *(cfg.lora.client_ranks or [])}) > 1:
        problems.append(
            f"lora.client_ranks: refused with {key}; heterogeneous ranks need per-client "
            "factors, and masked vectors must have one shape to cancel; drop lora.client_ranks"
        )
    if cfg.robust.method != "none":
        problems.append(
            f"robust.method={cfg.robust.method}: refused with {key}; a defence judges each "
            "client's update, and the server sees only their sum; use robust.method=none"
        )
    if cfg.federation.upload_compression != "none":
        problems.append(
            f"federation.upload_compression={cfg.federation.upload_compression}: refused with "
            f"{key}; SecAgg quantizes the update itself (privacy.secagg.bits); set it to none"
        )
    if privacy.adaptive_clip and privacy.noise_at == "server":
        problems.append(
            f"privacy.adaptive_clip: refused with {key} and privacy.noise_at=server; the "
            "server would read each client's clip bit off its update, which SecAgg hides; "
            "use privacy.noise_at=clients (the noised bits are summed securely)"
        )
    clients = cfg.federation.num_clients
    bits = privacy.secagg.bits
    if clients * (1 << bits) >= 1 << MODULUS_BITS:
        problems.append(
            f"privacy.secagg.bits={bits}: {clients} clients x 2^{bits} levels can wrap the "
            f"2^{MODULUS_BITS} modulus; use at most {MODULUS_BITS - clients.bit_length()} bits"
        )
    federation = cfg.federation
    per_round = min(
        clients, max(int(federation.fraction_fit * clients), 1, federation.min_fit_clients)
    )
    if federation.selection == "poisson":
        per_round = clients  # a Poisson round's size varies; the round itself checks it
    if clients < MIN_CLIENTS or per_round < MIN_CLIENTS:
        problems.append(
            f"federation.fraction_fit={federation.fraction_fit}: {key} needs at least "
            f"{MIN_CLIENTS} clients a round, this config selects {per_round} of {clients}; "
            "with two, each learns the other's update from the sum"
        )
    elif privacy.secagg.neighbours is not None and privacy.secagg.neighbours >= per_round:
        problems.append(
            f"privacy.secagg.neighbours={privacy.secagg.neighbours}: must be below the "
            f"{per_round} clients a round"
        )
    elif reconstruction_threshold(privacy.secagg, per_round) > neighbourhood_size(
        privacy.secagg, per_round
    ):
        problems.append(
            f"privacy.secagg.reconstruction_threshold={privacy.secagg.reconstruction_threshold}:"
            " must be at most the neighbourhood size "
            f"{neighbourhood_size(privacy.secagg, per_round)} of a round's {per_round} clients"
        )
    return problems
