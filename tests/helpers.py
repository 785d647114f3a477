"""Helpers shared by test modules (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedit.server.observer import RunObserver

# The device the gpu-marked tests run on. FEDIT_GPU_TEST_DEVICE=cpu runs them on the CPU instead,
# which checks the tests themselves on a machine without a GPU (`pytest -m gpu`); the tests that
# measure CUDA memory skip there.
GPU_TEST_DEVICE = os.environ.get("FEDIT_GPU_TEST_DEVICE", "cuda")
needs_cuda = pytest.mark.skipif(
    GPU_TEST_DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with `make test-gpu`",
)
# Mark a whole test module: `pytestmark = GPU`.
GPU = [pytest.mark.gpu, needs_cuda]
# Parametrize a test over the CPU (default suite) and the GPU (`-m gpu`).
CPU_AND_GPU = [
    pytest.param("cpu", id="cpu"),
    pytest.param(GPU_TEST_DEVICE, id="gpu", marks=GPU),
]


def tiny_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that make the quickstart run in seconds on the tiny model."""
    return [
        f"model.name={model_dir}",
        f"output_dir={out}",
        "data.synthetic.num_examples=160",
        "data.test_per_category=2",
        "federation.num_clients=4",
        "federation.rounds=2",
        "federation.fraction_fit=0.5",
        "train.local_steps=2",
        "train.batch_size=4",
        "train.micro_batch_size=2",
        "eval.max_new_tokens=4",
        *extra,
    ]


class CrashInRound(RunObserver):
    def __init__(self, server_round: int):
        self.server_round = server_round

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        if server_round == self.server_round:
            raise KeyboardInterrupt
