"""The mechanism: clipping, noise scale for both noise_at settings, dropouts and empty rounds
topped up, uniform weights, and noise that no seed reproduces."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedit.config import load_config
from fedit.privacy import randomness
from fedit.privacy.mechanism import clip, global_norm, privatize_update
from fedit.privacy.randomness import NoiseSource
from fedit.server.privacy import PrivacyRun
from fedit.server.privacy_budget import make_plan
from fedit.strategy import build_strategy
from fedit.types import ClientUpdate, FitConfig, FitInstruction

B = "m.layers.0.q_proj.lora_B.weight"
A = "m.layers.0.q_proj.lora_A.weight"


def test_clipped_norm_at_most_c_and_inside_unchanged():
    gen = torch.Generator().manual_seed(0)
    for scale in (0.01, 0.3, 1.0, 7.0, 300.0):
        delta = {A: torch.randn(4, 8, generator=gen) * scale, B: torch.randn(8, 4, generator=gen)}
        clipped, norm = clip(delta, 1.5)
        assert global_norm(clipped) <= 1.5 + 1e-6
        assert norm == pytest.approx(global_norm(delta))
        if norm <= 1.5:
            assert all(clipped[n] is delta[n] for n in delta)  # untouched, not even rescaled
        else:
            assert global_norm(clipped) == pytest.approx(1.5, rel=1e-6)
    with pytest.raises(ValueError):
        clip(delta, 0.0)


def _run(*extra: str, sizes=(1, 9, 5, 5)):
    cfg = load_config(
        None,
        [
            "privacy.level=client",
            "privacy.noise_multiplier=1.0",
            "privacy.clip_norm=2.0",
            f"federation.num_clients={len(sizes)}",
            "seed=7",
            *extra,
        ],
    )
    return cfg, PrivacyRun(cfg, make_plan(cfg, list(sizes)))


def _instructions(run: PrivacyRun, state, clients, trainable="all"):
    configs = [FitConfig(lr=0.1, rank=2, seed=100 + c, trainable=trainable) for c in clients]
    return run.instruct(
        [FitInstruction(c, state, cfg) for c, cfg in zip(clients, configs, strict=True)]
    )


def _reply(instruction, delta, num_examples, noise=None):
    state = {n: instruction.state[n] + delta.get(n, 0) for n in instruction.state}
    update = ClientUpdate(instruction.client_id, state, num_examples, train_loss=1.0, num_steps=1)
    if instruction.config.dp_level == "client":  # what client.fit.fit_client does
        update = privatize_update(
            update, instruction.state, instruction.config, noise or NoiseSource()
        )
    return update


@pytest.mark.parametrize("noise_at", ["server", "clients"])
def test_noise_std_is_z_c_over_m(noise_at):
    # 10 of 100 clients per round (fixed size): D = m = 10; z = 1, C = 2 -> std 0.2 per coordinate
    cfg, run = _run(f"privacy.noise_at={noise_at}", "federation.fraction_fit=0.1", sizes=[10] * 100)
    state = {B: torch.zeros(400, 300)}  # 120,000 coordinates
    instructions = _instructions(run, state, list(range(10)))
    updates = [_reply(i, {}, 10) for i in instructions]
    if noise_at == "clients":  # every reply already carries its share: N(0, z²C²/D)
        share = updates[0].state[B].std().item()
        assert share == pytest.approx(2.0 / 10**0.5, rel=0.02)
    (mean,) = run.aggregation_input(1, state, updates)
    assert mean.state[B].mean().item() == pytest.approx(0.0, abs=0.002)
    assert mean.state[B].std().item() == pytest.approx(1.0 * 2.0 / 10, rel=0.02)


def test_dropouts_leave_the_accounted_noise_in_the_released_sum():
    # Every one of 4 clients each round (D = 4), noise at the clients: 2 drop, so their replies
    # carry half the accounted variance; the server must add the other half. z = 1, C = 2:
    # the released sum's noise has std z·C = 2, i.e. 0.5 on the mean over D = 4.
    cfg, run = _run("privacy.noise_at=clients", "federation.fraction_fit=1.0", sizes=[5] * 4)
    state = {B: torch.zeros(400, 300)}  # 120,000 coordinates
    instructions = _instructions(run, state, [0, 1, 2, 3])
    survivors = [_reply(i, {}, 5) for i in instructions[:2]]
    (mean,) = run.aggregation_input(1, state, survivors)
    released_sum = mean.state[B] * 4
    assert released_sum.std().item() == pytest.approx(2.0, rel=0.02)
    # without the server's top-up it would have been 2/√2 = 1.41: the test can tell them apart
    assert abs(released_sum.std().item() - 2.0 / 2**0.5) > 0.5


def test_an_empty_round_releases_the_noise():
    # Poisson selection drew nobody: the server still releases x + N(0, z²C²)/D, never skips.
    cfg, run = _run("federation.selection=poisson", "federation.sample_rate=0.5", sizes=[5] * 4)
    state = {B: torch.zeros(300, 200)}
    run.instruct([])
    (mean,) = run.aggregation_input(1, state, [])
    assert mean.state[B].std().item() == pytest.approx(1.0 * 2.0 / 2, rel=0.02)  # D = qN = 2


def test_unweighted_mean_whatever_the_example_counts():
    # Worked example: C = 2, 2 of 4 clients per round (D = 2), no noise; client 0 holds 1
    # example and moves by (1, 0), client 1 holds 9 and moves by (0, 1). FedAvg's weighted
    # mean would be (0.1, 0.9); under DP it is ((1, 0) + (0, 1)) / 2 = (0.5, 0.5).
    cfg, run = _run("federation.fraction_fit=0.5")
    run.plan.update_noise_multiplier = 1e-9  # isolate the weighting from the noise
    state = {B: torch.zeros(2)}
    instructions = _instructions(run, state, [0, 1])
    updates = [
        _reply(instructions[0], {B: torch.tensor([1.0, 0.0])}, 1),
        _reply(instructions[1], {B: torch.tensor([0.0, 1.0])}, 9),
    ]
    new_state, _ = build_strategy(cfg).aggregate_fit(
        1, state, run.aggregation_input(1, state, updates)
    )
    torch.testing.assert_close(new_state[B], torch.tensor([0.5, 0.5]))


def test_server_clips_again_and_reads_the_clip_bits_itself():
    cfg, run = _run(
        "federation.fraction_fit=0.5",
        "privacy.adaptive_clip=true",
        "privacy.count_noise_std=1e-4",
        "privacy.noise_multiplier=1e-6",
    )
    state = {B: torch.zeros(2)}
    instructions = _instructions(run, state, [0, 1])
    # client 1 ignores its instruction and sends an unclipped update of norm 10
    honest = _reply(instructions[0], {B: torch.tensor([0.0, 1.0])}, 1)
    rogue = ClientUpdate(1, {B: torch.tensor([10.0, 0.0])}, 1, 1.0, 1)
    assert "dp_unclipped" not in honest.metrics  # the server needs no bit from the client
    (mean,) = run.aggregation_input(1, state, [honest, rogue])
    torch.testing.assert_close(mean.state[B], torch.tensor([1.0, 0.5]))  # (2, 0) and (0, 1) / 2
    record = run.round_metrics()
    # one of two within C: Σ(b − ½) = 0, so the noised estimate is ½ (count noise std 1e-4 / 2)
    assert record["unclipped_estimate"] == pytest.approx(0.5, abs=1e-3)
    assert "clipped_fraction" not in record


def test_ffa_lora_noise_on_b_only():
    cfg, run = _run("strategy.name=ffa_lora", "federation.fraction_fit=0.5")
    state = {A: torch.ones(3, 4), B: torch.zeros(4, 3)}
    instructions = _instructions(run, state, [0, 1], trainable="lora_B")
    (mean,) = run.aggregation_input(1, state, [_reply(i, {}, 3) for i in instructions])
    assert torch.equal(mean.state[A], state[A])
    assert mean.state[B].abs().sum() > 0


def _server_noise(*extra):
    _, run = _run("federation.fraction_fit=0.5", *extra)
    state = {B: torch.zeros(50)}
    run.instruct([])
    return run.aggregation_input(1, state, [])[0].state[B]


def test_server_noise_is_secret_unless_reproducible():
    # Same config, same seed: different noise, so nobody holding config.yaml can subtract it.
    assert not torch.equal(_server_noise(), _server_noise())
    # privacy.reproducible_noise restores seeded noise: same seed, same noise; another seed not
    reproducible = ("privacy.reproducible_noise=true",)
    assert torch.equal(_server_noise(*reproducible), _server_noise(*reproducible))
    assert not torch.equal(_server_noise(*reproducible), _server_noise(*reproducible, "seed=8"))


def test_a_clients_noise_does_not_depend_on_the_seed_the_server_sends(monkeypatch):
    _, run = _run("privacy.noise_at=clients", "federation.fraction_fit=0.5")
    state = {B: torch.zeros(1000)}
    (instruction,) = _instructions(run, state, [0])

    def noised(server_seed):
        config = dataclasses.replace(instruction.config, seed=server_seed)
        return _reply(FitInstruction(0, state, config), {}, 1).state[B]

    assert not torch.equal(noised(1), noised(1))  # fresh secret entropy every round
    # With the site's entropy held fixed, the server's seed changes nothing of the noise.
    monkeypatch.setattr(randomness.secrets, "randbits", lambda bits: 12345)
    assert torch.equal(noised(1), noised(2))


def test_adaptive_clip_moves_c_towards_the_quantile():
    cfg, run = _run(
        "privacy.adaptive_clip=true",
        "federation.fraction_fit=1.0",
        "privacy.count_noise_std=0.1",
        "privacy.noise_multiplier=0.1",
    )
    state = {B: torch.zeros(2)}
    # every update is tiny: all unclipped, so C shrinks by about exp(-0.2 * (1 - 0.5))
    updates = [
        _reply(i, {B: torch.tensor([0.01, 0.0])}, 1)
        for i in _instructions(run, state, [0, 1, 2, 3])
    ]
    run.aggregation_input(1, state, updates)
    record = run.round_metrics()
    assert record["clip_norm"] == 2.0
    assert record["next_clip_norm"] < 2.0
    assert record["next_clip_norm"] == pytest.approx(2.0 * 2.718281828 ** (-0.1), rel=0.05)
    assert dataclasses.asdict(run.plan)["count_noise_std"] == 0.1
