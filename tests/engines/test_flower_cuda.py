"""Flower on CUDA (``-m gpu``): a SuperLink and two SuperNodes on 127.0.0.1 whose sites train on
the GPU give the adapter the in-process simulation gives on the same GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from flower_support import Federation  # noqa: E402

from fedit.config import load_config  # noqa: E402
from fedit.experiment import run_experiment  # noqa: E402
from helpers import GPU, GPU_TEST_DEVICE, tiny_args  # noqa: E402

pytestmark = GPU

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
FAST = (
    "eval.generate=false",
    "data.synthetic.num_examples=80",
    "federation.num_clients=2",
    "federation.fraction_fit=1.0",
    "flower.connect_timeout=60",
    # model.device=cuda fails the run where a site cannot reach a GPU (auto would fall back).
    f"model.device={GPU_TEST_DEVICE}",
)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "global_adapter" / "adapter_model.safetensors"))


def test_flower_sites_on_the_gpu_match_in_process(tiny_model_dir, tmp_path):
    with Federation(tmp_path) as federation:
        for client in range(2):
            federation.add_node({"partition-id": client, "num-partitions": 2, "num-threads": 1})
        result = federation.run(
            str(QUICKSTART), *tiny_args(tiny_model_dir, tmp_path / "flower", *FAST)
        )
        logs = result.stdout + result.stderr + federation.logs()
    assert result.returncode == 0, logs
    config = load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "local", *FAST))
    local, remote = _adapter(run_experiment(config).run_dir), _adapter(tmp_path / "flower")
    assert local.keys() == remote.keys()
    assert max((local[k] - remote[k]).abs().max().item() for k in local) <= 1e-4
