"""Peak GPU memory of the in-process simulation is flat in the number of clients (``-m gpu``).

One base model serves every simulated client, and client adapters live on the CPU between
turns, so 1, 4 and 20 clients must peak within 5% of each other. The LoRA adapter is made
large (r=64 on every linear layer: 0.5 MiB per copy against a peak of a few MiB) so that one
adapter copy kept on the GPU per client would show. Every example is the same text, so every
batch has the same shape whatever the split.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch

from fedit.cli.main import main
from helpers import GPU, GPU_TEST_DEVICE, tiny_args

pytestmark = GPU

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
CLIENTS = (1, 4, 20)


def _peak_mib(model_dir: Path, data: Path, out: Path, num_clients: int) -> float:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    args = tiny_args(
        model_dir,
        out,
        f"data.source={data}",
        f"federation.num_clients={num_clients}",
        "federation.fraction_fit=1.0",  # every client trains in every round
        "lora.r=64",
        "lora.target_modules=all-linear",
        "model.device=cuda",
        "eval.generate=false",
    )
    assert main(["run", str(QUICKSTART), *args]) == 0
    return (torch.cuda.max_memory_allocated() - start) / 2**20


def test_peak_gpu_memory_is_flat_in_the_number_of_clients(tiny_model_dir, tmp_path):
    if GPU_TEST_DEVICE != "cuda":
        pytest.skip("measures CUDA memory")
    data = tmp_path / "same.jsonl"
    row = {
        "instruction": "Reverse the words.",
        "input": "red green blue",
        "output": "blue green red",
    }
    data.write_text("".join(json.dumps(row | {"category": f"c{i % 4}"}) + "\n" for i in range(168)))
    _peak_mib(tiny_model_dir, data, tmp_path / "warm-up", 1)  # CUDA and cuBLAS set-up
    peaks = {n: _peak_mib(tiny_model_dir, data, tmp_path / f"clients{n}", n) for n in CLIENTS}
    print(f"peak GPU memory (MiB) by number of clients: {peaks}")
    assert max(peaks.values()) <= 1.05 * min(peaks.values()), peaks
