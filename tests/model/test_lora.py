"""LoRA: freezing, deterministic init, the adapter exchange format, and PEFT-folder round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from fedit.config import LoraConfig, ModelConfig
from fedit.model import (
    apply_lora,
    count_parameters,
    get_adapter_state,
    load_adapter_state,
    load_model,
    save_adapter,
    set_adapter_state,
)
from fedit.types import AdapterState


def _peft_model(folder: Path, seed: int = 0, **lora: object) -> PeftModel:
    model, _ = load_model(ModelConfig(name=str(folder), device="cpu"))
    return apply_lora(model, LoraConfig(**lora), seed=seed)  # type: ignore[arg-type]


def _random_state(model: PeftModel, seed: int = 1) -> AdapterState:
    generator = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(value.shape, generator=generator) * 0.1
        for key, value in get_adapter_state(model).items()
    }


def test_only_lora_parameters_train(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    num_trainable, total = count_parameters(model)
    # 2 layers x (q_proj, v_proj) x (A: r x 64, B: out x r), r=16, q out 64, v out 32.
    assert num_trainable == 2 * (16 * 64 + 64 * 16 + 16 * 64 + 32 * 16)
    assert total == sum(p.numel() for p in model.parameters())


def test_all_linear_targets_mlp(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir, target_modules="all-linear")
    keys = get_adapter_state(model)
    assert any("mlp.down_proj" in key for key in keys)
    assert not any("lm_head" in key for key in keys)


def test_init_is_deterministic_and_keeps_global_rng(tiny_model_dir: Path) -> None:
    rng_before = torch.get_rng_state()
    first = get_adapter_state(_peft_model(tiny_model_dir, seed=7))
    second = get_adapter_state(_peft_model(tiny_model_dir, seed=7))
    other = get_adapter_state(_peft_model(tiny_model_dir, seed=8))
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(not torch.equal(first[key], other[key]) for key in first if "lora_A" in key)
    assert all(not value.any() for key, value in first.items() if "lora_B" in key)


def test_adapter_state_is_a_detached_fp32_cpu_copy(tiny_model_dir: Path) -> None:
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", dtype="bf16"))
    model = apply_lora(model, LoraConfig())
    state = get_adapter_state(model)
    assert state and all(key.endswith(".weight") and "default" not in key for key in state)
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in state.values())
    assert all(not v.requires_grad for v in state.values())
    key = next(iter(state))
    state[key].add_(1.0)
    assert not torch.equal(get_adapter_state(model)[key], state[key])


def test_set_adapter_state_round_trip(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir)
    state = _random_state(model)
    set_adapter_state(model, state)
    loaded = get_adapter_state(model)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_set_adapter_state_rejects_wrong_keys(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir)
    state = get_adapter_state(model)
    missing_key = sorted(state)[0]
    partial = {k: v for k, v in state.items() if k != missing_key}
    with pytest.raises(ValueError, match="missing 1 keys") as info:
        set_adapter_state(model, partial)
    assert missing_key in str(info.value)
    with pytest.raises(ValueError, match="unexpected 1 keys.*bogus.lora_A.weight"):
        set_adapter_state(model, {**state, "bogus.lora_A.weight": torch.zeros(1)})


def test_save_adapter_loads_with_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = _peft_model(tiny_model_dir)
    state = _random_state(model)
    set_adapter_state(model, state)
    path = tmp_path / "adapter"
    save_adapter(model, _random_state(model, seed=99), path)  # replaced below
    save_adapter(model, state, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    assert {p.name for p in path.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    loaded = load_adapter_state(path)
    assert all(torch.equal(loaded[key], state[key]) for key in state)

    fresh_base, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    reloaded = PeftModel.from_pretrained(fresh_base, str(path)).eval()
    input_ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    with torch.no_grad():
        expected = model.eval()(input_ids=input_ids).logits
        actual = reloaded(input_ids=input_ids).logits
    assert torch.equal(actual, expected)


def test_load_adapter_state_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        load_adapter_state(tmp_path)
