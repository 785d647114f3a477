"""Local training on CUDA in bf16 against fp32 (``-m gpu``).

Tolerances, for two AdamW steps of the tiny Llama at lr 1e-3 (measured with bf16 autocast on a
CPU, where the same tests run with ``FEDIT_GPU_TEST_DEVICE=cpu``): the mean loss within 1% of
fp32's (measured 2e-5), and the change of the adapter pointing the same way as fp32's, cosine
0.98 or more (measured 0.996 and more) and a relative difference of at most 25% (measured 9%).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client.train import resolve_autocast, train_local
from fedit.config import LoraConfig, ModelConfig, TrainConfig
from fedit.data.templates import tokenize_examples
from fedit.model import apply_lora, load_model
from fedit.types import ClientUpdate
from helpers import GPU, GPU_TEST_DEVICE, INSTRUCTION_ROWS

pytestmark = GPU

EXAMPLES = [
    {"instruction": i, "input": x, "output": o, "category": "c"} for i, x, o in INSTRUCTION_ROWS
]


def _train(
    folder: Path, dtype: str, autocast: str
) -> tuple[ClientUpdate, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two steps from the same start; returns (update, parameters before, parameters after)."""
    model, tokenizer = load_model(
        ModelConfig(name=str(folder), device=GPU_TEST_DEVICE, dtype=dtype)
    )
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    examples, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=256)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(local_steps=2, batch_size=4, micro_batch_size=4, autocast=autocast)
    update = train_local(model, examples, cfg, client_id=0, lr=1e-3, seed=0)
    after = {name: p.detach().clone() for name, p in model.named_parameters()}
    return update, before, after


def _change(update: ClientUpdate, before: dict[str, torch.Tensor]) -> torch.Tensor:
    """The adapter's change over the run, flattened in the order of the update's keys."""
    initial = {k.replace(".default.", "."): v for k, v in before.items() if "lora_" in k}
    assert initial.keys() == update.state.keys()
    return torch.cat([(update.state[k] - initial[k].cpu().float()).flatten() for k in initial])


def test_auto_autocast_is_bf16_on_cuda() -> None:
    if GPU_TEST_DEVICE != "cuda":
        pytest.skip("what train.autocast=auto picks on a CPU is tested in test_train.py")
    assert torch.cuda.is_bf16_supported()
    assert resolve_autocast(torch.device("cuda"), "auto") is torch.bfloat16


@pytest.mark.parametrize(
    ("dtype", "autocast"),
    [("fp32", "bf16"), ("bf16", "none")],
    ids=["fp32-weights-bf16-autocast", "bf16-weights"],
)
def test_bf16_training_matches_fp32(tiny_model_dir: Path, dtype: str, autocast: str) -> None:
    reference, start, _ = _train(tiny_model_dir, "fp32", "none")
    update, before, after = _train(tiny_model_dir, dtype, autocast)

    assert abs(update.train_loss - reference.train_loss) <= 1e-2 * reference.train_loss
    expected, actual = _change(reference, start), _change(update, before)
    cosine = torch.nn.functional.cosine_similarity(expected, actual, dim=0)
    assert cosine >= 0.98
    assert (actual - expected).norm() <= 0.25 * expected.norm()

    # trl's check: every LoRA parameter changed, no base parameter did, all on the device.
    for name, value in after.items():
        assert value.device.type == torch.device(GPU_TEST_DEVICE).type
        changed = not torch.equal(before[name], value)
        assert changed == ("lora_" in name), name
