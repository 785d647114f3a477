"""``train.kernels``: liger refused where it cannot run, ``auto`` silent without it, the patch call.

liger-kernel needs triton and CUDA, so on a CPU the patch itself is checked through a stand-in
module; ``test_kernels_cuda.py`` runs the real kernels (``-m gpu``).
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

from fedit.cli.main import main
from fedit.config import ConfigError
from fedit.model import kernels
from fedit.model.kernels import apply_kernels, kernels_wanted
from helpers import tiny_args


def test_liger_without_cuda_fails_with_one_line_before_writing(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", *tiny_args(tiny_model_dir, out, "model.device=cpu", "train.kernels=liger")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error: train.kernels: liger needs a CUDA GPU"), err
    assert len(err.splitlines()) == 1, err
    assert not out.exists()


def _train_losses(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if json.loads(line)["round"] > 0]


def test_auto_on_a_cpu_trains_as_none_and_says_nothing(tiny_model_dir, tmp_path, caplog):
    common = ("model.device=cpu", "federation.rounds=1", "eval.base=false")
    with caplog.at_level(logging.INFO, logger="fedit.model.kernels"):
        assert main(["run", *tiny_args(tiny_model_dir, tmp_path / "auto", *common)]) == 0
    assert not [r for r in caplog.records if r.name == "fedit.model.kernels"]
    none = ("train.kernels=none", *common)
    assert main(["run", *tiny_args(tiny_model_dir, tmp_path / "none", *none)]) == 0
    assert _train_losses(tmp_path / "auto") == _train_losses(tmp_path / "none")


@pytest.fixture
def cuda_and_liger(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Pretend a CUDA GPU and liger-kernel are here; liger's patch only records its call."""
    calls: list[dict] = []
    fake = types.ModuleType("liger_kernel.transformers")
    fake.apply_liger_kernel_to_llama = lambda **kwargs: calls.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "liger_installed", lambda: True)
    return calls


def test_without_liger_installed_auto_skips_and_liger_names_the_extra(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kernels, "liger_installed", lambda: False)
    assert kernels_wanted("auto", "cuda") is False
    with pytest.raises(ConfigError, match=r"train.kernels: liger needs liger-kernel.*\[kernels\]"):
        kernels_wanted("liger", "auto")
    assert kernels_wanted("none", "cuda") is False


def test_liger_patches_norms_rope_swiglu_but_not_the_forward(cuda_and_liger, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert apply_kernels(model, "auto", "cuda") is True
    assert apply_kernels(model, "liger", "auto") is True
    expected = {
        "rope": True,
        "rms_norm": True,
        "swiglu": True,
        "cross_entropy": False,
        "fused_linear_cross_entropy": False,  # fedit's masked logits path stays (module doc)
        "model": model,
    }
    assert cuda_and_liger == [expected, expected]
    assert apply_kernels(model, "none", "cuda") is False
    assert apply_kernels(model, "auto", "cpu") is False
    assert len(cuda_and_liger) == 2


def test_an_uncovered_family_is_refused_by_liger_and_skipped_by_auto(cuda_and_liger):
    model = types.SimpleNamespace(config=types.SimpleNamespace(model_type="gpt2"))
    assert apply_kernels(model, "auto", "cuda") is False
    with pytest.raises(ConfigError, match="train.kernels: liger covers model types llama"):
        apply_kernels(model, "liger", "cuda")
    assert cuda_and_liger == []
