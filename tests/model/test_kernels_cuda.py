"""``train.kernels=liger`` on CUDA: a patched tiny Llama trains to the plain loss (``-m gpu``).

Two AdamW steps in fp32 from the same start, so both the kernels' forward and their backward
(through the first update) are in the mean loss. Tolerance 1e-3 absolute, on a loss of about 6:
the kernels only reorder fp32 arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedit.client.train import train_local
from fedit.config import LoraConfig, ModelConfig, TrainConfig
from fedit.data.templates import tokenize_examples
from fedit.model import apply_lora, load_model
from fedit.model.kernels import apply_kernels, module_patches_undone
from helpers import GPU, GPU_TEST_DEVICE, INSTRUCTION_ROWS

pytestmark = GPU

EXAMPLES = [{"instruction": i, "input": x, "output": o} for i, x, o in INSTRUCTION_ROWS]


def _mean_loss(folder: Path, kernels: str) -> float:
    base, tokenizer = load_model(ModelConfig(name=str(folder), device="cuda", dtype="fp32"))
    applied = apply_kernels(base, kernels, "cuda")
    assert applied == (kernels == "liger")
    model = apply_lora(base, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    examples, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=256)
    cfg = TrainConfig(local_steps=2, batch_size=4, micro_batch_size=4, autocast="none")
    return train_local(model, examples, cfg, client_id=0, lr=1e-3, seed=0).train_loss


def test_liger_patched_tiny_llama_matches_the_unpatched_loss(tiny_model_dir: Path) -> None:
    if GPU_TEST_DEVICE != "cuda":
        pytest.skip("liger-kernel's Triton kernels run on CUDA only")
    pytest.importorskip("liger_kernel", reason="pip install 'fedit[kernels]' (gpu-check does)")
    with module_patches_undone("llama"):  # liger's RoPE is module-wide; later tests get it back
        plain = _mean_loss(tiny_model_dir, "none")  # before any patch exists
        patched = _mean_loss(tiny_model_dir, "liger")
    assert abs(patched - plain) <= 1e-3, (patched, plain)
