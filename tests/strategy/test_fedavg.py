"""FedAvg and the update checks, against values computed by hand."""

import pytest
import torch

from fedit.config import load_config
from fedit.strategy import FedAvg
from fedit.strategy.aggregate import (
    EmptyRoundError,
    MismatchedUpdateError,
    validate_updates,
    weighted_average,
)
from fedit.types import ClientUpdate


def _update(client_id: int, value: list[float], n: int) -> ClientUpdate:
    return ClientUpdate(client_id, {"w": torch.tensor(value)}, n, train_loss=0.0, num_steps=1)


def test_weighted_average_unequal_weights():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}]
    # weights 1:3 -> (1*1 + 3*4)/4 = 3.25, (1*2 + 3*8)/4 = 6.5
    out = weighted_average(states, [1, 3])
    torch.testing.assert_close(out["w"], torch.tensor([3.25, 6.5]))


def test_weighted_average_equal_weights_is_mean():
    states = [{"a": torch.full((2, 2), 2.0)}, {"a": torch.zeros(2, 2)}, {"a": torch.ones(2, 2)}]
    torch.testing.assert_close(weighted_average(states, [5, 5, 5])["a"], torch.ones(2, 2))


def test_fedavg_weights_by_num_examples():
    strategy = FedAvg(load_config())
    global_state = {"w": torch.zeros(1)}
    updates = [_update(0, [10.0], 10), _update(1, [0.0], 30)]
    # 10 * 10/40 + 0 * 30/40 = 2.5
    new, metrics = strategy.aggregate_fit(1, global_state, updates)
    assert metrics == {}
    torch.testing.assert_close(new["w"], torch.tensor([2.5]))


def test_fedavg_output_does_not_alias_inputs():
    strategy = FedAvg(load_config())
    update = _update(0, [1.0], 1)
    new, _ = strategy.aggregate_fit(1, {"w": torch.zeros(1)}, [update])
    new["w"] += 1
    assert update.state["w"].item() == 1.0


def test_validate_rejects_empty_and_mismatched():
    global_state = {"w": torch.zeros(2)}
    with pytest.raises(EmptyRoundError):
        validate_updates(global_state, [])
    with pytest.raises(MismatchedUpdateError, match="shape"):
        validate_updates(global_state, [_update(0, [1.0, 2.0, 3.0], 1)])
    bad_keys = ClientUpdate(3, {"v": torch.zeros(2)}, 1, 0.0, 1)
    with pytest.raises(MismatchedUpdateError, match="client 3"):
        validate_updates(global_state, [bad_keys])
    with pytest.raises(EmptyRoundError):
        validate_updates(global_state, [_update(0, [1.0, 1.0], 0)])


def test_validate_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        validate_updates({"w": torch.zeros(1)}, [_update(0, [float("nan")], 1)])
