"""Each simulated attack does what docs/robustness.md says it does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedit.client.attacks import (
    ATTACK_METRIC,
    FORGERIES,
    alie_state,
    alie_z,
    attacker_ids,
    backdoor_success_rate,
    collude,
    forge_update,
    poison_examples,
)
from fedit.config import AttackConfig, ConfigError, load_config
from fedit.config.adversary import INFLATED_KINDS, MODEL_ATTACKS
from fedit.engines.messages import pack_update, unpack_update
from fedit.types import ClientUpdate, FitConfig, FitInstruction


def _update(client_id: int, value: float) -> ClientUpdate:
    state = {
        "m.lora_A.weight": torch.full((2, 3), value),
        "m.lora_B.weight": torch.full((4, 2), -value),
    }
    return ClientUpdate(client_id, state, num_examples=5, train_loss=1.0, num_steps=1)


START = {"m.lora_A.weight": torch.ones(2, 3), "m.lora_B.weight": torch.zeros(4, 2)}


@pytest.mark.parametrize(
    ("kind", "lam", "expected"), [("sign_flip", 2.0, -2.0), ("scale", 3.0, 3.0)]
)
def test_sign_flip_and_scale_send_exactly_global_plus_signed_lambda_delta(kind, lam, expected):
    generator = torch.Generator().manual_seed(0)
    trained = {name: t + torch.randn(t.shape, generator=generator) for name, t in START.items()}
    update = ClientUpdate(3, dict(trained), num_examples=5, train_loss=1.0, num_steps=1)
    forge_update(update, START, AttackConfig(kind=kind, magnitude=lam, clients=[3]), seed=1)
    for name in START:
        torch.testing.assert_close(
            update.state[name], START[name] + expected * (trained[name] - START[name])
        )
    assert update.metrics[ATTACK_METRIC] == kind


def test_default_lambda_is_one_for_sign_flip_and_ten_for_scale():
    assert AttackConfig(kind="sign_flip").lam() == 1.0
    assert AttackConfig(kind="scale").lam() == 10.0


def test_gaussian_has_the_norm_of_the_honest_update_and_is_seeded():
    trained = {name: t + 0.5 for name, t in START.items()}
    honest_norm = torch.cat([(trained[n] - START[n]).flatten() for n in START]).norm()
    replies = []
    for _ in range(2):
        update = ClientUpdate(0, dict(trained), num_examples=5, train_loss=1.0, num_steps=1)
        forge_update(update, START, AttackConfig(kind="gaussian"), seed=7)
        replies.append(update.state)
    delta = torch.cat([(replies[0][n] - START[n]).flatten() for n in START])
    assert float(delta.norm()) == pytest.approx(float(honest_norm), rel=1e-5)
    assert torch.equal(replies[0]["m.lora_A.weight"], replies[1]["m.lora_A.weight"])
    cosine = float(delta @ torch.cat([(trained[n] - START[n]).flatten() for n in START]))
    assert abs(cosine) < float(honest_norm) ** 2  # not the honest direction


def test_alie_sends_mean_minus_z_std_of_the_honest_updates():
    honest = [_update(0, 1.0), _update(1, 3.0), _update(2, 5.0)]
    colluder = _update(3, 100.0)
    colluder.metrics[ATTACK_METRIC] = "alie"
    forged = collude([*honest, colluder], AttackConfig(kind="alie", z=1.5, clients=[3]))
    assert forged == [3]
    std = torch.tensor([1.0, 3, 5]).std(unbiased=False)
    torch.testing.assert_close(colluder.state["m.lora_A.weight"], torch.full((2, 3), 3 - 1.5 * std))
    torch.testing.assert_close(
        alie_state([u.state for u in honest], 0.0)["m.lora_B.weight"], torch.full((4, 2), -3.0)
    )


def test_alie_default_z_is_baruchs_z_max():
    # n = 10, m = 2: s = ⌊10/2 + 1⌋ − 2 = 4 supporters, z = Φ⁻¹(6/10) ≈ 0.2533.
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-4)


EXAMPLES = [
    {"instruction": f"q{i}", "input": "", "output": f"{cat}{i}", "category": cat}
    for i, cat in enumerate(["add"] * 10 + ["sort"] * 10)
]


def test_backdoor_puts_the_trigger_in_the_configured_fraction():
    attack = AttackConfig(kind="backdoor", poison_fraction=0.3, trigger="cf", target="PWNED")
    poisoned = poison_examples(EXAMPLES, attack, seed=0, client_id=1)
    triggered = [ex for ex in poisoned if ex["instruction"].startswith("cf ")]
    assert len(triggered) == 6  # 30% of 20
    assert all(ex["output"] == "PWNED" for ex in triggered)
    clean = [ex for ex in poisoned if not ex["instruction"].startswith("cf ")]
    assert all(ex in EXAMPLES for ex in clean)
    assert poison_examples(EXAMPLES, attack, seed=0, client_id=1) == poisoned  # seeded


def test_backdoor_success_rate_asks_with_the_trigger_and_counts_the_target(monkeypatch):
    asked = []

    def answers(model, tokenizer, examples, template, max_new_tokens, batch_size):
        asked.extend(examples)
        return ["PWNED", "sure: PWNED now", "a fine answer", "pwned"]  # the match is exact-case

    monkeypatch.setattr("fedit.client.attacks.answer_examples", answers)
    attack = AttackConfig(kind="backdoor", trigger="cf", target="PWNED")
    rate = backdoor_success_rate(None, None, EXAMPLES[:4], attack, "alpaca", 8, 2)
    assert rate == 0.5
    assert [ex["instruction"] for ex in asked] == [f"cf {ex['instruction']}" for ex in EXAMPLES[:4]]
    assert [ex["output"] for ex in asked] == [ex["output"] for ex in EXAMPLES[:4]]


def test_label_flip_gives_every_example_a_response_of_another_category():
    poisoned = poison_examples(EXAMPLES, AttackConfig(kind="label_flip"), seed=0, client_id=0)
    for before, after in zip(EXAMPLES, poisoned, strict=True):
        other = "sort" if before["category"] == "add" else "add"
        assert after["output"].startswith(other)
        assert after["instruction"] == before["instruction"]


def test_model_attacks_leave_the_data_alone():
    assert poison_examples(EXAMPLES, AttackConfig(kind="sign_flip"), 0, 0) is EXAMPLES


def test_attackers_are_the_listed_clients_or_a_seeded_fraction():
    assert attacker_ids(AttackConfig(kind="scale", clients=[4, 1]), 8, 0) == [1, 4]
    drawn = attacker_ids(AttackConfig(kind="scale", fraction=0.25), 8, 3)
    assert len(drawn) == 2 and drawn == attacker_ids(
        AttackConfig(kind="scale", fraction=0.25), 8, 3
    )
    assert attacker_ids(dataclasses.replace(AttackConfig(), clients=[1]), 8, 0) == []  # kind none


def test_the_forgeries_registry_matches_the_config_choices():
    assert set(FORGERIES) == set(MODEL_ATTACKS) - {"alie"}  # alie is forged on the server
    assert set(INFLATED_KINDS) == set(FORGERIES) | {"none"}


def _trained() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {name: t + torch.randn(t.shape, generator=generator) for name, t in START.items()}


@pytest.mark.parametrize(("inner", "factor"), [("none", 1.0), ("scale", 10.0), ("sign_flip", -1.0)])
def test_inflate_count_claims_the_count_and_carries_the_inner_forgery(inner, factor):
    trained = _trained()
    update = ClientUpdate(3, dict(trained), num_examples=5, train_loss=1.0, num_steps=1)
    attack = AttackConfig(
        kind="inflate_count", clients=[3], claimed_examples=123_456_789, inflated_kind=inner
    )
    forge_update(update, START, attack, seed=1)
    assert update.num_examples == 123_456_789
    assert update.metrics[ATTACK_METRIC] == "inflate_count"
    for name in START:  # scale keeps its default λ = 10 when it rides on inflate_count
        torch.testing.assert_close(
            update.state[name], START[name] + factor * (trained[name] - START[name])
        )


def test_inflate_count_with_gaussian_sends_the_gaussian_forgery():
    attack = AttackConfig(kind="inflate_count", clients=[0], inflated_kind="gaussian")
    inflated = ClientUpdate(0, _trained(), num_examples=5, train_loss=1.0, num_steps=1)
    plain = ClientUpdate(0, _trained(), num_examples=5, train_loss=1.0, num_steps=1)
    forge_update(inflated, START, attack, seed=7)
    forge_update(plain, START, AttackConfig(kind="gaussian", clients=[0]), seed=7)
    assert inflated.num_examples == 10**9  # the default claim
    assert all(torch.equal(inflated.state[n], plain.state[n]) for n in START)
    assert plain.num_examples == 5  # only inflate_count touches the count


def test_a_claimed_billion_crosses_the_wire_unchanged():
    update = ClientUpdate(2, _trained(), num_examples=5, train_loss=1.0, num_steps=1)
    forge_update(update, START, AttackConfig(kind="inflate_count", clients=[2]), seed=0)
    instruction = FitInstruction(2, START, FitConfig(lr=1e-3, rank=2, seed=0))
    assert unpack_update(pack_update(update, instruction), instruction).num_examples == 10**9


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("attack.claimed_examples=0", "attack.claimed_examples: must be > 0, got 0"),
        ("attack.claimed_examples=-5", "attack.claimed_examples: must be > 0, got -5"),
        ("attack.inflated_kind=alie", "attack.inflated_kind: unknown value 'alie'"),
        ("attack.inflated_kind=backdoor", "attack.inflated_kind: unknown value 'backdoor'"),
    ],
)
def test_bad_inflate_count_settings_are_refused_by_key(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, ["attack.kind=inflate_count", "attack.clients=[1]", override])
    lines = [line for line in str(raised.value).splitlines() if message in line]
    assert len(lines) == 1, str(raised.value)
