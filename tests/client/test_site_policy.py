"""A site's privacy floor and its public reply: refusals by name, node config, what is withheld."""

from __future__ import annotations

import pytest
import torch

from fedit.client.site_policy import (
    InstructionRefusedError,
    SitePolicy,
    public_reply,
)
from fedit.config import ConfigError
from fedit.types import ClientUpdate, FitConfig

FLOOR = SitePolicy(min_noise_multiplier=2.0, max_clip_norm=1.0)


def _config(**fields) -> FitConfig:
    base = {"dp_level": "client", "dp_clip_norm": 1.0, "dp_noise_multiplier": 2.0}
    return FitConfig(lr=0.1, rank=2, seed=1, **{**base, "dp_noise_shares": 4.0, **fields})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"dp_noise_multiplier": 1.0}, "its noise multiplier z=1 is below 2"),
        ({"dp_clip_norm": 1.5}, "its clip norm C=1.5 exceeds 1"),
        ({"dp_level": "none"}, "asks for no differential privacy"),
        ({"dp_noise_shares": 0.0}, "noise is added at the server"),
        ({"dp_level": "example", "dp_noise_shares": 0.0, "dp_noise_multiplier": 1.9}, "z=1.9"),
    ],
    ids=["low z", "large C", "no DP", "noise at server", "example level"],
)
def test_floor_refuses_weaker_instructions_naming_the_client(fields, reason):
    with pytest.raises(InstructionRefusedError) as refused:
        FLOOR.check(_config(**fields), client_id=5)
    message = str(refused.value)
    assert message.startswith("client 5 refused the instruction:") and reason in message
    assert "min-noise-multiplier=2" in message and "max-clip-norm=1" in message


def test_floor_accepts_what_meets_it_and_no_floor_accepts_anything():
    FLOOR.check(_config(), client_id=0)  # z = 2, C = 1: exactly the floor
    FLOOR.check(_config(dp_level="example", dp_noise_shares=0.0), client_id=0)
    SitePolicy().check(_config(dp_level="none"), client_id=0)


def test_node_config_is_the_sites_own_and_checked():
    policy = SitePolicy.from_node_config(
        {"min-noise-multiplier": "2", "max-clip-norm": 0.5, "reproducible-noise": "true"}
    )
    assert policy == SitePolicy(2.0, 0.5, True)
    assert SitePolicy.from_node_config(policy.to_node_config()) == policy
    assert SitePolicy.from_node_config({}) == SitePolicy()
    for bad in ({"min-noise-multiplier": 0}, {"max-clip-norm": "x"}, {"reproducible-noise": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SitePolicy.from_node_config(bad)


def test_public_reply_keeps_only_the_update_and_its_noised_bit():
    update = ClientUpdate(
        3,
        {"w": torch.ones(2)},
        num_examples=42,
        train_loss=1.25,
        num_steps=7,
        metrics={"tokens": 900, "seconds": 3.0, "reward_accuracy": 0.5, "dp_unclipped": 0.9},
    )
    public = public_reply(update, _config())
    assert (public.num_examples, public.train_loss, public.num_steps) == (0, 0.0, 0)
    assert public.metrics == {"dp_unclipped": 0.9}
    assert torch.equal(public.state["w"], torch.ones(2))
    plain = ClientUpdate(3, {"w": torch.ones(2)}, 42, 1.25, 7, {"tokens": 900})
    assert public_reply(plain, _config(dp_level="none")).num_examples == 42  # no DP: untouched
