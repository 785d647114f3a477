"""Privacy accounting with dp-accounting (Google): DP events, ε, and calibration of z.

Nothing here is hand-written mathematics: every ε comes from ``dp_accounting``'s RDP or PLD
accountant, and ``calibrate_noise`` is ``dp_accounting.calibrate_dp_mechanism``. This module
only says which event describes a round, under which neighbouring relation:

===================  ==============================================  =====================
how clients train    event per round (dp-accounting)                 neighbouring relation
===================  ==============================================  =====================
poisson (rate q)     ``PoissonSampledDpEvent(q, Gaussian(z))``        add or remove one
fixed size m of N    ``SampledWithoutReplacementDpEvent(N, m, ...)``  replace one (RDP only)
every client         ``GaussianDpEvent(z)``                           add or remove one
===================  ==============================================  =====================

``z`` is always the noise standard deviation over the clip norm C on the *sum* of clipped
contributions. Under add/remove-one the sum's L2 sensitivity is C, so the event's noise
multiplier is z; under replace-one (the only relation dp-accounting's sampling-without-
replacement analysis, Wang et al. 2019, supports) one contribution is swapped for another and
the sensitivity is 2C, so the event gets z/2. Adaptive clipping (Andrew et al. 2021) releases
a second Gaussian sum, Σ(b_i − ½) with noise σ_b, whose sensitivity is ½ (add/remove) or 1
(replace); the round's event composes both, and dp-accounting's RDP treats that composition
exactly (as one Gaussian with z_eff = (Σ z_j⁻²)^-½). The PLD accountant takes only a single
Gaussian inside a Poisson event, so for it the two are merged into that z_eff first.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dp_accounting
from dp_accounting import NeighboringRelation as Relation
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedit.config import ConfigError

SAMPLINGS = ("poisson", "fixed", "all")


class AccountingError(ConfigError):
    """The accountant gave no valid ε (NaN or negative): the run stops rather than report one."""


@dataclass(frozen=True)
class Sampling:
    """How the participants of one release are drawn from a population of ``population``.

    ``kind`` is ``poisson`` (each independently with ``rate``), ``fixed`` (a uniform subset of
    ``size`` without replacement) or ``all`` (everyone, no amplification).
    """

    kind: str
    population: int
    rate: float = 1.0
    size: int = 0

    @property
    def relation(self) -> Relation:
        """The neighbouring relation dp-accounting analyses this sampling under."""
        return Relation.REPLACE_ONE if self.kind == "fixed" else Relation.ADD_OR_REMOVE_ONE

    @property
    def expected_size(self) -> float:
        """How many participate on average: q·N, m, or N."""
        return {"poisson": self.rate * self.population, "fixed": self.size}.get(
            self.kind, self.population
        )


def effective_multiplier(multipliers: list[float]) -> float:
    """z of the one Gaussian equivalent to Gaussians of ``multipliers`` on the same input."""
    return sum(z**-2 for z in multipliers) ** -0.5


def update_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """Andrew et al. 2021: the update's z_Δ so that z_Δ and the count noise compose to z.

    The count Σ(b_i − ½) has add/remove sensitivity ½, so its multiplier is 2σ_b and
    z_Δ = (z⁻² − (2σ_b)⁻²)^-½.

    Raises:
        ValueError: 2σ_b ≤ z, which leaves nothing for the update.
    """
    count_multiplier = 2 * count_noise_std
    if count_multiplier <= noise_multiplier:
        raise ValueError(
            f"privacy.count_noise_std={count_noise_std:g} must exceed z/2={noise_multiplier / 2:g}"
            " so that the clipped count leaves budget for the update noise; raise it, or the "
            "clients per round"
        )
    return (noise_multiplier**-2 - count_multiplier**-2) ** -0.5


def round_event(
    sampling: Sampling,
    update_noise: float,
    count_noise_std: float | None = None,
    accountant: str = "rdp",
) -> dp_event.DpEvent:
    """The event of one client-level round: a sampled Gaussian sum (and its clipped count).

    Args:
        sampling: How this round's clients were drawn.
        update_noise: z_Δ, the noise std over C on the sum of clipped updates.
        count_noise_std: σ_b on Σ(b_i − ½) with adaptive clipping, else None.
        accountant: ``rdp`` or ``pld`` (PLD needs the merged single Gaussian).
    """
    scale = 2.0 if sampling.relation == Relation.REPLACE_ONE else 1.0  # sensitivity / C
    multipliers = [update_noise / scale]
    if count_noise_std is not None:
        multipliers.append(count_noise_std / (scale / 2))
    if len(multipliers) == 1:
        inner: dp_event.DpEvent = dp_event.GaussianDpEvent(multipliers[0])
    elif accountant == "pld":
        inner = dp_event.GaussianDpEvent(effective_multiplier(multipliers))
    else:
        inner = dp_event.ComposedDpEvent([dp_event.GaussianDpEvent(z) for z in multipliers])
    if sampling.kind == "poisson":
        return dp_event.PoissonSampledDpEvent(sampling.rate, inner)
    if sampling.kind == "fixed":
        return dp_event.SampledWithoutReplacementDpEvent(sampling.population, sampling.size, inner)
    return inner


def example_event(sample_rate: float, noise_multiplier: float, steps: int) -> dp_event.DpEvent:
    """DP-SGD on one client: ``steps`` Poisson-sampled Gaussian steps (add/remove one)."""
    step = dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier))
    return dp_event.SelfComposedDpEvent(step, steps)


def repeated(event: dp_event.DpEvent, count: int) -> dp_event.DpEvent:
    """``event`` composed ``count`` times."""
    return dp_event.SelfComposedDpEvent(event, count)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Hide RDP's per-order "failed to converge" warnings: such orders are left out of the
    minimum over orders, so ε stays a valid (if slightly looser) bound, and one run would
    otherwise log hundreds of them."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


def make_accountant(kind: str, relation: Relation) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting ``RdpAccountant`` or ``PLDAccountant``."""
    if kind == "rdp":
        return RdpAccountant(neighboring_relation=relation)
    if kind == "pld":
        return PLDAccountant(neighboring_relation=relation)
    raise ValueError(f"privacy.accountant: unknown value {kind!r}; choose rdp or pld")


def epsilon(event: dp_event.DpEvent, delta: float, kind: str, relation: Relation) -> float:
    """ε at ``delta`` of ``event``, never a made-up value: this fails closed.

    Raises:
        ValueError: the accountant cannot analyse the event (dp-accounting's reason).
        AccountingError: the accountant returned NaN or a negative ε.
    """
    accountant = make_accountant(kind, relation)
    try:
        accountant.compose(event)
    except dp_accounting.UnsupportedEventError as err:
        raise ValueError(f"privacy.accountant={kind}: {err}") from None
    with _quiet_absl():
        value = float(accountant.get_epsilon(delta))
    if math.isnan(value) or value < 0:
        raise AccountingError(
            f"privacy.accountant={kind}: dp-accounting returned ε={value} at δ={delta:g}; "
            "the run stops rather than report a guarantee it cannot state"
        )
    return value


def calibrate_noise(
    make_event: Callable[[float], dp_event.DpEvent],
    target_epsilon: float,
    delta: float,
    kind: str,
    relation: Relation,
) -> float:
    """The smallest z whose ``make_event(z)`` spends at most ``target_epsilon`` at ``delta``.

    Raises:
        ValueError: no z in [0.05, 500] reaches the target.
    """
    low, high = 0.05, 500.0
    if epsilon(make_event(high), delta, kind, relation) > target_epsilon:
        raise ValueError(
            f"privacy.target_epsilon={target_epsilon:g}: not reachable even with z={high:g} "
            "at this δ; raise the target, or lower federation.rounds or the local steps"
        )
    if epsilon(make_event(low), delta, kind, relation) <= target_epsilon:
        return low
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: make_accountant(kind, relation),
            make_event,
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            tol=1e-3,
        )
    )
