"""model.dtype=auto and the one bf16 detector; a bf16 frozen base trains fp32 LoRA parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.client.device import resolve_autocast
from fedit.client.train import train_local
from fedit.config import ConfigError, ModelConfig, TrainConfig, load_config
from fedit.model import load_model, precision
from helpers import tiny_lora

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [False, True])
def test_auto_follows_the_cpu_detection(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, native: bool
) -> None:
    """An AVX2-only CPU (no native bf16) keeps fp32 weights and no autocast; a bf16 CPU, bf16."""
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert precision.resolve_model_dtype("auto", CPU) is expected
    assert resolve_autocast(CPU, "auto") is (torch.bfloat16 if native else None)
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="auto"))
    assert {p.dtype for p in model.parameters()} == {expected}


def test_explicit_dtypes_keep_working() -> None:
    assert precision.resolve_model_dtype("fp32", CPU) is torch.float32
    assert precision.resolve_model_dtype("bf16", CPU) is torch.bfloat16
    assert precision.resolve_model_dtype("fp16", CPU) is torch.float16
    assert load_config(None, ["model.dtype=auto"]).model.dtype == "auto"
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(None, ["model.dtype=fp8"])


def test_cuda_auto_asks_torch_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_model_dtype("auto", cuda) is torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_model_dtype("auto", cuda) is torch.bfloat16


def test_cpuinfo_flags_are_a_second_opinion(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where torch's probes say no (or are missing), the kernel's flags still count."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    for flags, native in (("fpu avx2 fma", False), ("fpu avx2 avx512f avx512_bf16", True)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n", encoding="utf-8")
        precision.cpu_supports_bf16.cache_clear()
        assert precision.cpu_supports_bf16() is native
    precision.cpu_supports_bf16.cache_clear()
    assert "bf16" in precision.bf16_support_line(CPU)


def test_bf16_base_trains_only_fp32_lora_parameters(tiny_model_dir: Path) -> None:
    """trl's check on a bf16 base: every LoRA parameter (fp32) moves, no base parameter does."""
    model, _, examples = tiny_lora(tiny_model_dir, dtype="bf16", dropout=0.05)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    cfg = TrainConfig(local_steps=3, batch_size=4, micro_batch_size=4, autocast="none")
    update = train_local(model, examples, cfg, client_id=0, lr=1e-2, seed=0)
    assert torch.isfinite(torch.tensor(update.train_loss))
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if "lora_" in name:
            assert param.dtype == torch.float32 and param.requires_grad, name
            assert changed, f"LoRA parameter {name} did not change"
        else:
            assert param.dtype == torch.bfloat16 and not param.requires_grad, name
            assert not changed, f"base parameter {name} changed"
