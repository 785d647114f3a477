"""4-bit (NF4) and 8-bit bitsandbytes bases: LoRA training, adapters that move to a full-precision
base, bit-identical resume and the merged export.

bitsandbytes 0.50.2 runs these layers on a CPU too, so the default suite runs every test here on
the CPU; ``-m gpu`` runs the same tests on CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedit.cli.main import main
from fedit.client.train import train_local
from fedit.config import LoraConfig, ModelConfig, TrainConfig, load_config
from fedit.data.templates import TokenizedExample, tokenize_examples
from fedit.experiment import run_experiment
from fedit.model import apply_lora, load_model
from fedit.model.lora import save_adapter
from helpers import CPU_AND_GPU, CrashInRound, tiny_args

pytest.importorskip("bitsandbytes", reason="bitsandbytes (the [gpu] extra) is not installed")

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
QUANTIZED_LAYERS = {"4bit": "Linear4bit", "8bit": "Linear8bitLt"}
ROWS = [
    ("What is 12 + 35?", "", "47"),
    ("Sort these numbers.", "5, 3, 9", "3, 5, 9"),
    ("Reverse the words.", "red green blue", "blue green red"),
    ("Convert 3 km to meters.", "", "3000"),
    ("What is 7 + 8?", "", "15"),
    ("Sort these numbers.", "9, 1, 4, 2", "1, 2, 4, 9"),
]
EXAMPLES = [{"instruction": i, "input": x, "output": o, "category": "c"} for i, x, o in ROWS]
TRAIN = TrainConfig(local_steps=3, batch_size=3, micro_batch_size=3, autocast="auto")


def _quantized_lora(
    folder: Path, device: str, quantization: str
) -> tuple[PeftModel, list[TokenizedExample]]:
    cfg = ModelConfig(name=str(folder), device=device, quantization=quantization)
    model, tokenizer = load_model(cfg)
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), seed=0)
    examples, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=256)
    return model, examples


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids.to(next(model.parameters()).device)).logits.float().cpu()


@pytest.mark.parametrize("device", CPU_AND_GPU)
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_training_changes_every_lora_parameter_and_no_base_parameter(
    tiny_model_dir: Path, device: str, quantization: str
) -> None:
    model, examples = _quantized_lora(tiny_model_dir, device, quantization)
    layers = [
        m
        for m in model.modules()
        if type(m).__module__.startswith("bitsandbytes")  # peft's wrappers share the name
        and type(m).__name__ == QUANTIZED_LAYERS[quantization]
    ]
    assert len(layers) == 14  # 2 decoder layers x 7 linear layers; LoRA wraps q_proj, v_proj
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    update = train_local(model, examples, TRAIN, client_id=0, lr=1e-2, seed=0)
    assert update.num_steps == 3 and torch.isfinite(torch.tensor(update.train_loss))
    lora = 0
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if "lora_" in name:
            lora += 1
            assert param.device.type == torch.device(device).type
            assert changed, f"LoRA parameter {name} did not change"
        else:
            assert not changed, f"base parameter {name} changed"
    assert lora == 8
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in update.state.values())


@pytest.mark.parametrize("device", CPU_AND_GPU)
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_adapter_from_a_quantized_base_fits_the_full_precision_base(
    tiny_model_dir: Path, tmp_path: Path, device: str, quantization: str
) -> None:
    """The adapter adds no error of its own: with it, the full-precision base is as close to the
    quantized base as the two bases are without it, and it changes both the same way."""
    model, examples = _quantized_lora(tiny_model_dir, device, quantization)
    update = train_local(model, examples, TRAIN, client_id=0, lr=1e-2, seed=0)
    save_adapter(model, update.state, tmp_path / "adapter")
    ids = torch.tensor([examples[1].input_ids])
    quantized = _logits(model, ids)
    with model.disable_adapter():
        quantized_base = _logits(model, ids)

    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(device).eval()
    full_base = _logits(full, ids)
    adapted = PeftModel.from_pretrained(full, str(tmp_path / "adapter")).eval()
    full_adapted = _logits(adapted, ids)

    base_gap = _relative(full_base, quantized_base)  # measured: 4bit 0.09, 8bit 0.008
    assert _relative(full_adapted, quantized) <= 1.5 * base_gap + 1e-3
    effect_full, effect_quantized = full_adapted - full_base, quantized - quantized_base
    cosine = torch.nn.functional.cosine_similarity(
        effect_full.flatten(), effect_quantized.flatten(), dim=0
    )
    assert cosine >= 0.99  # measured: 4bit 0.996, 8bit 0.99996
    assert _relative(full_adapted, full_base) > 5 * _relative(full_adapted, quantized)


@pytest.mark.parametrize("device", CPU_AND_GPU)
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_resume_is_bit_identical(
    tiny_model_dir: Path, tmp_path: Path, device: str, quantization: str
) -> None:
    extra = (
        f"model.device={device}",
        f"model.quantization={quantization}",
        "federation.rounds=2",
        "eval.generate=false",
    )
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "full", *extra)))
    args = tiny_args(tiny_model_dir, tmp_path / "crashed", *extra)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(QUICKSTART, args), CrashInRound(2))
    assert not (tmp_path / "crashed" / "global_adapter").exists()
    assert main(["run", str(QUICKSTART), *args, "resume=true"]) == 0

    full = load_file(str(tmp_path / "full" / "global_adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(tmp_path / "crashed" / "global_adapter" / "adapter_model.safetensors"))
    assert full.keys() == resumed.keys()
    for key, value in full.items():
        assert torch.equal(value, resumed[key]), key
    start = load_file(
        str(tmp_path / "full" / "checkpoints" / "round_001" / "adapter_model.safetensors")
    )
    assert any(not torch.equal(full[k], start[k]) for k in full)  # round 2 trained something


@pytest.mark.parametrize("device", CPU_AND_GPU)
def test_merged_export_of_a_4bit_run_loads_with_plain_transformers(
    tiny_model_dir: Path, tmp_path: Path, device: str
) -> None:
    """``--merge`` dequantizes the 4-bit base first: the merged model computes what the 4-bit base
    plus adapter did, much closer than merging into the original full-precision weights."""
    run = tmp_path / "run"
    extra = (
        f"model.device={device}",
        "model.quantization=4bit",
        "federation.rounds=1",
        "eval.generate=false",
        "train.lr=1e-2",
    )
    assert main(["run", str(QUICKSTART), *tiny_args(tiny_model_dir, run, *extra)]) == 0
    adapter, out = run / "global_adapter", tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--merge"]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "fedit_export.json").read_text())["dequantized_from"] == "4bit"

    merged = AutoModelForCausalLM.from_pretrained(out).to(device).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    quantized, _ = load_model(
        ModelConfig(name=str(tiny_model_dir), device=device, quantization="4bit")
    )
    reference = PeftModel.from_pretrained(quantized, str(adapter)).eval()
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(device)
    naive = PeftModel.from_pretrained(full, str(adapter)).merge_and_unload().eval()

    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    expected = _logits(reference, ids)
    merged_gap, naive_gap = (
        _relative(_logits(merged, ids), expected),
        _relative(_logits(naive, ids), expected),
    )
    # CPU: fp32 both ways, so only rounding; CUDA: the 4-bit reference computes in bf16.
    assert merged_gap <= (1e-4 if device == "cpu" else 2e-2)
    assert merged_gap < naive_gap / 4


def test_4bit_weights_keep_the_training_layout_on_a_cpu_with_native_bf16(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an AVX512-BF16 CPU bitsandbytes repacks a 4-bit weight for its bf16 kernel at the first
    eval-mode forward and keeps it packed, so training after an evaluation computed otherwise
    than training before one (a resumed run skips the base evaluation). The capability check
    bitsandbytes consults is forced here, so an AVX2 machine exercises that path too."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu", quantization="4bit"))
    layers = [m for m in model.modules() if isinstance(m, bnb_modules.Linear4bit)]
    assert layers and all(layer.support_avx512bf16_for_cpu is False for layer in layers)
    with torch.no_grad():
        model(torch.tensor([[1, 40, 41, 42]]))  # an evaluation: eval mode, no gradients
    packed = [getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers]
    assert not any(packed)
