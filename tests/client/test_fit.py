"""One client's round: FedProx's pull, SCAFFOLD's variates, FFA-LoRA's frozen A, other ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client import train as train_module
from fedit.client.fit import fit_client
from fedit.client.state import ClientStateStore, Stamp, StampError
from fedit.config import Config, LoraConfig, ModelConfig, TrainConfig
from fedit.data.templates import tokenize_examples
from fedit.model import apply_lora, get_adapter_state, load_model
from fedit.model.lora import adapter_parameters
from fedit.types import CONTROL_DELTA, FitConfig, FitInstruction, prefixed

EXAMPLES = [
    {"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b), "category": "math"}
    for a, b in [(1, 2), (30, 12), (7, 8), (40, 2), (5, 5), (9, 90)]
]
TRAIN = TrainConfig(local_steps=3, batch_size=2, micro_batch_size=2, autocast="none")
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)
CFG = Config(lora=LORA, train=TRAIN, seed=0)


@pytest.fixture
def setup(tiny_model_dir: Path):
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    model = apply_lora(model, LORA, seed=0)
    tokenized, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=128)
    return model, tokenized, get_adapter_state(model)


def _instruction(state, **config) -> FitInstruction:
    return FitInstruction(0, state, FitConfig(**{"lr": 5e-2, "rank": LORA.r, "seed": 1, **config}))


def _distance(a, b) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def test_ffa_lora_never_changes_a(setup):
    model, examples, start = setup
    # B starts at zero; move it off zero so that A would receive gradient if it were trainable.
    start = {k: (v + 0.1 if ".lora_B." in k else v) for k, v in start.items()}
    update = fit_client(model, examples, CFG, _instruction(start, trainable="lora_B"))
    for key, value in update.state.items():
        if ".lora_A." in key:
            assert torch.equal(value, start[key]), key
        else:
            assert not torch.equal(value, start[key]), key
    assert all(p.requires_grad for p in adapter_parameters(model).values())  # restored


def test_fedprox_pulls_towards_the_global_adapter(setup):
    model, examples, start = setup
    free = fit_client(model, examples, CFG, _instruction(start, proximal_mu=0.0))
    held = fit_client(model, examples, CFG, _instruction(start, proximal_mu=50.0))
    assert _distance(held.state, start) < 0.8 * _distance(free.state, start)


def test_proximal_gradient_matches_autograd():
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    anchor = {"w": torch.tensor([0.5, 0.0, 3.0])}
    param.grad = torch.zeros(3)
    train_module._add_proximal_gradient({"w": param}, 0.3, anchor)
    reference = torch.nn.Parameter(param.detach().clone())
    (0.3 / 2 * (reference - anchor["w"]).pow(2).sum()).backward()
    torch.testing.assert_close(param.grad, reference.grad)


RUN_ID = "0123456789abcdef0123456789abcdef"


def _scaffold(start, server_control, server_round: int = 1) -> FitInstruction:
    """A SCAFFOLD instruction of ``server_round``, stamped as the loop stamps it."""
    stamp = Stamp(RUN_ID, (1,), server_round)
    config = stamp.stamped(FitConfig(lr=5e-2, rank=LORA.r, seed=1, scaffold=True))
    return FitInstruction(0, start, config, {"server_control": server_control})


def test_scaffold_reply_carries_option_ii_control_delta(setup, tmp_path):
    model, examples, start = setup
    server = {k: torch.full_like(v, 1e-3) for k, v in start.items()}
    store = ClientStateStore.for_run(tmp_path)
    update = fit_client(model, examples, CFG, _scaffold(start, server), store=store)
    lr_sum = update.metrics["lr_sum"]
    assert lr_sum == pytest.approx(3 * 5e-2)
    for key, delta in update.extras[CONTROL_DELTA].items():
        # Δc_i = c_i⁺ − c_i = (x − y_i) / Σ η_t − c
        expected = (start[key] - update.state[key]) / lr_sum - server[key]
        torch.testing.assert_close(delta, expected)
    # The client kept c_i⁺ = 0 + Δc_i itself, for the next round it trains in.
    kept = store.load(0, Stamp(RUN_ID, (1,), 2))
    assert set(kept) == {f"scaffold/control/{key}" for key in start}
    for key, delta in update.extras[CONTROL_DELTA].items():
        assert torch.equal(kept[f"scaffold/control/{key}"], delta)


def test_scaffold_corrects_by_c_minus_the_clients_own_c_i(setup, tmp_path):
    model, examples, start = setup
    zeros = {k: torch.zeros_like(v) for k, v in start.items()}
    store = ClientStateStore.for_run(tmp_path)
    c_i = {k: torch.full_like(v, 0.01) for k, v in start.items()}
    store.save(0, Stamp(RUN_ID, (1,), 1), prefixed("scaffold/control", c_i))
    # Round 2: c = c_i, so c − c_i = 0: the run is plain training.
    plain = fit_client(model, examples, CFG, _instruction(start))
    same = fit_client(model, examples, CFG, _scaffold(start, c_i, 2), store=store)
    assert all(torch.equal(plain.state[k], same.state[k]) for k in start)
    # Round 3 reads round 2's c_i⁺, not round 1's.
    advanced = store.load(0, Stamp(RUN_ID, (1,), 3))
    for key in start:
        expected = c_i[key] + same.extras[CONTROL_DELTA][key]
        assert torch.equal(advanced[f"scaffold/control/{key}"], expected)
    with pytest.raises(ValueError, match="SCAFFOLD needs a state store"):
        fit_client(model, examples, CFG, _scaffold(start, zeros))
    unstamped = FitInstruction(0, start, FitConfig(lr=5e-2, rank=LORA.r, seed=1, scaffold=True))
    with pytest.raises(StampError, match="state_run '' is not 32 hex digits"):
        fit_client(model, examples, CFG, unstamped, store=store)


def test_scaffold_correction_shifts_every_step(setup, tmp_path):
    model, examples, start = setup
    plain = fit_client(model, examples, CFG, _instruction(start))
    correction = {k: torch.full_like(v, 0.01) for k, v in start.items()}
    store = ClientStateStore.for_run(tmp_path)  # empty: c_i = 0
    corrected = fit_client(model, examples, CFG, _scaffold(start, correction), store=store)
    # Each of the 3 steps moves every parameter by −η (c − c_i) = −5e-4 on top of AdamW's step.
    shift = torch.cat([(corrected.state[k] - plain.state[k]).flatten() for k in start])
    assert shift.mean().item() == pytest.approx(-3 * 5e-2 * 0.01, rel=0.3)


def test_the_instruction_seed_and_rank_switch_decide_the_round(setup):
    model, examples, start = setup
    again = fit_client(model, examples, CFG, _instruction(start, seed=2))
    same = fit_client(model, examples, CFG, _instruction(start, seed=2))
    other = fit_client(model, examples, CFG, _instruction(start, seed=3))
    assert all(torch.equal(again.state[k], same.state[k]) for k in start)  # seeded
    assert not all(torch.equal(again.state[k], other.state[k]) for k in start)

    # A rank-2 client trains a rank-2 adapter and the model is back on its default adapter.
    small = {
        k: (v[:2] if ".lora_A." in k else v[:, :2]) + (0.1 if ".lora_B." in k else 0.0)
        for k, v in start.items()
    }
    update = fit_client(model, examples, CFG, _instruction(small, rank=2))
    assert all(update.state[k].shape == small[k].shape for k in small)
    assert not all(torch.equal(update.state[k], small[k]) for k in small)
    assert model.active_adapter == "default"
