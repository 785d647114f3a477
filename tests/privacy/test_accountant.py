"""The accountant: our events give dp-accounting's own numbers, and a published one."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from fedit.config import ConfigError, load_config
from fedit.privacy.accountant import (
    Relation,
    Sampling,
    calibrate_noise,
    epsilon,
    example_event,
    repeated,
    round_event,
    update_multiplier,
)
from fedit.privacy.plan import plan_client_level, plan_example_level


def _direct(accountant, event, delta):
    accountant.compose(event)
    return accountant.get_epsilon(delta)


def test_poisson_rounds_match_dp_accounting_rdp_and_pld():
    q, z, rounds, delta = 0.05, 0.8, 10, 1e-3
    sampling = Sampling("poisson", 100, rate=q)
    cfg = load_config(
        None,
        [
            "privacy.level=client",
            f"privacy.noise_multiplier={z}",
            f"privacy.delta={delta}",
            "federation.selection=poisson",
            f"federation.sample_rate={q}",
            f"federation.rounds={rounds}",
        ],
    )
    direct_event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), rounds
    )
    rdp = _direct(RdpAccountant(), direct_event, delta)
    pld = _direct(PLDAccountant(), direct_event, delta)
    assert plan_client_level(cfg, 100, 10).client_epsilon(rounds) == pytest.approx(rdp, rel=1e-12)
    ours_pld = epsilon(
        repeated(round_event(sampling, z, None, "pld"), rounds), delta, "pld", sampling.relation
    )
    assert ours_pld == pytest.approx(pld, rel=1e-9)
    assert pld < rdp  # PLD is the tighter of the two


def test_published_value_opacus_compute_dp_sgd_privacy():
    """Opacus's docs (opacus.scripts.compute_dp_sgd_privacy): sample rate 1 %, noise multiplier
    1.0, 300 steps, δ = 1e-5, RDP orders (2, 5, 10, 20, 100) -> ε = 2.39."""
    accountant = RdpAccountant(orders=[2, 5, 10, 20, 100])
    assert _direct(accountant, example_event(0.01, 1.0, 300), 1e-5) == pytest.approx(
        2.39, abs=0.005
    )
    # dp-accounting's default orders can only be tighter.
    assert epsilon(example_event(0.01, 1.0, 300), 1e-5, "rdp", Relation.ADD_OR_REMOVE_ONE) <= 2.39


def test_abadi_et_al_moments_accountant_bound():
    """Abadi et al. 2016, Sec. 3.1: q = 0.01, σ = 4, T = 10000, δ = 1e-5 gives ε ≈ 1.26 with the
    moments accountant; RDP with the Balle et al. 2020 conversion is no looser."""
    value = epsilon(example_event(0.01, 4.0, 10_000), 1e-5, "rdp", Relation.ADD_OR_REMOVE_ONE)
    assert 0.9 < value <= 1.26


def test_fixed_size_is_sampling_without_replacement_under_replace_one():
    sampling = Sampling("fixed", 100, rate=0.1, size=10)
    event = round_event(sampling, 2.0)
    assert isinstance(event, dp_accounting.SampledWithoutReplacementDpEvent)
    # replace-one moves the clipped sum by up to 2C: the event's multiplier is z / 2
    assert event.event.noise_multiplier == pytest.approx(1.0)
    assert epsilon(event, 1e-5, "rdp", Relation.REPLACE_ONE) == pytest.approx(
        _direct(RdpAccountant(neighboring_relation=Relation.REPLACE_ONE), event, 1e-5)
    )
    with pytest.raises(ValueError, match="privacy.accountant=pld"):
        epsilon(event, 1e-5, "pld", Relation.REPLACE_ONE)


def test_every_client_gets_no_amplification():
    event = round_event(Sampling("all", 10), 1.5)
    assert event == dp_accounting.GaussianDpEvent(1.5)


def test_adaptive_clip_count_noise_is_in_epsilon():
    sampling = Sampling("poisson", 1000, rate=0.02)
    z, count_std = 1.0, 1.0
    z_update = update_multiplier(z, count_std)
    assert z_update > z  # the update gets less noise than z alone would ask ...
    composed = epsilon(
        repeated(round_event(sampling, z_update, count_std), 50), 1e-6, "rdp", sampling.relation
    )
    alone = epsilon(repeated(round_event(sampling, z_update), 50), 1e-6, "rdp", sampling.relation)
    total = epsilon(repeated(round_event(sampling, z), 50), 1e-6, "rdp", sampling.relation)
    assert composed > alone  # ... and the count's release costs ε
    assert composed == pytest.approx(total, rel=1e-9)  # together exactly one Gaussian of z
    with pytest.raises(ValueError, match="count_noise_std"):
        update_multiplier(2.0, 0.9)


def test_calibration_hits_the_target():
    sampling = Sampling("poisson", 500, rate=0.04)

    def make(z):
        return repeated(round_event(sampling, z), 40)

    z = calibrate_noise(make, 3.0, 1e-5, "rdp", sampling.relation)
    assert epsilon(make(z), 1e-5, "rdp", sampling.relation) == pytest.approx(3.0, abs=0.01)
    assert epsilon(make(z * 0.97), 1e-5, "rdp", sampling.relation) > 3.0


def test_example_level_calibrates_for_the_most_exposed_client():
    cfg = load_config(
        None, ["privacy.level=example", "privacy.target_epsilon=2", "privacy.delta=1e-5"]
    )
    # client 0: rate 0.2 for 10 steps; client 1: rate 0.02 for 300 steps; client 2 spends less
    # than client 1 (lower rate, fewer steps), so it is not calibrated for
    plan = plan_example_level(cfg, [20, 200, 400], [0.2, 0.02, 0.01], [10, 300, 100])
    spent = [plan.example_epsilon(0.2, 10), plan.example_epsilon(0.02, 300)]
    assert max(spent) == pytest.approx(2.0, abs=0.01)


def test_unreachable_target_is_a_config_error():
    cfg = load_config(
        None,
        [
            "privacy.level=client",
            "privacy.target_epsilon=0.01",
            "privacy.delta=1e-9",
            "federation.rounds=5000",
        ],
    )
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        plan_client_level(cfg, 2, 2)
