"""Local-k and Centralized follow FedIT's own schedule: the step budgets are computed by hand."""

from __future__ import annotations

import pytest
import torch

from fedit.config import ConfigError, load_config
from fedit.data.prepare import prepare_data
from fedit.evaluation.baselines import (
    Stint,
    choose_local_clients,
    pooled_schedule,
    step_schedule,
    train_schedule,
)
from fedit.experiment import load_setup
from helpers import tiny_args

HISTORY = [
    {"round": 0, "eval": {}},
    {"round": 1, "lr": 1e-3, "train_loss": {"0": 1.0, "2": 1.0}},
    {"round": 2, "lr": 5e-4, "train_loss": {"2": 1.0, "3": 1.0}},  # client 1 dropped out
    {"round": 3, "lr": 1e-4, "train_loss": {"0": 1.0, "2": 1.0}},
]
STEPS = [3, 5, 2, 4]  # per client per round


def test_step_schedule_follows_the_rounds_each_client_answered():
    schedule = step_schedule(HISTORY, STEPS)
    assert schedule[0] == [Stint(1, 1e-3, 3), Stint(3, 1e-4, 3)]
    assert schedule[1] == []
    assert schedule[2] == [Stint(1, 1e-3, 2), Stint(2, 5e-4, 2), Stint(3, 1e-4, 2)]
    assert schedule[3] == [Stint(2, 5e-4, 4)]


def test_pooled_schedule_sums_each_rounds_steps():
    pooled = pooled_schedule(step_schedule(HISTORY, STEPS))
    # round 1: 3 + 2, round 2: 2 + 4, round 3: 3 + 2; 16 steps = FedIT's total
    assert pooled == [Stint(1, 1e-3, 5), Stint(2, 5e-4, 6), Stint(3, 1e-4, 5)]


def test_local_clients_default_to_the_most_trained_and_refuse_idle_ones():
    schedule = step_schedule(HISTORY, STEPS)  # budgets: 0 -> 6, 1 -> 0, 2 -> 6, 3 -> 4
    cfg = load_config(None, ["federation.num_clients=4", "compare.num_local=2"])
    assert choose_local_clients(cfg, schedule) == [0, 2]
    cfg = load_config(None, ["federation.num_clients=4", "compare.num_local=3"])
    assert choose_local_clients(cfg, schedule) == [0, 2, 3]
    cfg = load_config(None, ["federation.num_clients=4", "compare.local_clients=[3,1]"])
    with pytest.raises(ConfigError, match="compare.local_clients: FedIT never trained client 1"):
        choose_local_clients(cfg, schedule)


def test_train_schedule_takes_every_step_and_is_reproducible(tiny_model_dir, tmp_path):
    cfg = load_config("configs/quickstart.yaml", tiny_args(tiny_model_dir, tmp_path / "run"))
    setup = load_setup(cfg, prepare_data(cfg))
    server, data = setup.server, setup.client_data
    stints = [Stint(1, 1e-3, 2), Stint(2, 5e-4, 1)]
    seen: list[int] = []
    first, steps = train_schedule(
        server.model,
        data[0],
        cfg,
        stints,
        server.initial_state(),
        client_id=0,
        on_stint=lambda stint: seen.append(stint.server_round),
    )
    again, _ = train_schedule(
        server.model, data[0], cfg, stints, server.initial_state(), client_id=0
    )
    other, _ = train_schedule(
        server.model, data[1], cfg, stints, server.initial_state(), client_id=1
    )
    assert steps == 3 and seen == [1, 2]
    start = server.initial_state()
    lora_b = [name for name in first if "lora_B" in name]
    assert all(not torch.equal(first[name], start[name]) for name in lora_b)  # it trained
    assert all(torch.equal(first[name], again[name]) for name in first)  # same seed, same result
    assert any(not torch.equal(first[name], other[name]) for name in first)  # other data
