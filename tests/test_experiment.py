"""Wiring of one experiment: the starting adapter depends on the seed and nothing else."""

import torch

from fedit import experiment
from fedit.config import load_config
from fedit.data.prepare import prepare_data
from fedit.experiment import load_setup


def _initial_state(model_dir, seed: int):
    cfg = load_config(
        None,
        [
            f"model.name={model_dir}",
            "data.synthetic.num_examples=40",
            "federation.num_clients=2",
            "data.test_per_category=1",
            f"seed={seed}",
        ],
    )
    return load_setup(cfg, prepare_data(cfg)).server.initial_state()


def test_lora_init_ignores_random_draws_while_loading(tiny_model_dir, monkeypatch):
    # A first run converts the embedded GGUF, which draws from the global RNG while loading;
    # the starting adapter must be the same as on later runs that skip the conversion.
    first = _initial_state(tiny_model_dir, seed=3)
    real_load = experiment.load_model

    def load_and_draw(cfg):
        loaded = real_load(cfg)
        torch.rand(1000)  # as the conversion's from_config initialisation does
        return loaded

    monkeypatch.setattr(experiment, "load_model", load_and_draw)
    again = _initial_state(tiny_model_dir, seed=3)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    other = _initial_state(tiny_model_dir, seed=4)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)
