"""gpu_scale.py's models and figures: the Llama shapes, the cards' bf16 peaks, the FLOPs per
sequence that MFU counts, the random-initialised (optionally NF4) model and its random rows.
"""

from __future__ import annotations

from typing import Any

import torch

from fedit.data.templates import IGNORE_INDEX, TokenizedExample

SHAPES: dict[str, dict[str, Any]] = {
    "1b": {  # Llama-3.2-1B (its long-context RoPE scaling left out: it costs nothing here)
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    "7b": {  # Llama-2-7B
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "tiny": {  # --smoke
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "tie_word_embeddings": True,
    },
}
# Dense bf16 tensor-core peak, FLOP/s, from NVIDIA's data sheets (no sparsity).
PEAK_BF16 = {"H100 SXM": 989e12, "H200": 989e12, "A100": 312e12}


def card_peak(name: str) -> tuple[str, float] | None:
    """The card's row of ``PEAK_BF16`` from its CUDA name, or None when it has none."""
    if "H200" in name:
        return "H200", PEAK_BF16["H200"]
    if "H100" in name and ("HBM3" in name or "SXM" in name):
        return "H100 SXM", PEAK_BF16["H100 SXM"]
    if "A100" in name:
        return "A100", PEAK_BF16["A100"]
    return None


def flops_per_sequence(shape: str, seq: int, scored: int, lora_params: int) -> float:
    """gpu_scale.py's F for one sequence of ``seq`` tokens, ``scored`` of them scored."""
    dims = SHAPES[shape]
    d, inner, layers = dims["hidden_size"], dims["intermediate_size"], dims["num_hidden_layers"]
    head = d // dims["num_attention_heads"]
    kv = dims["num_key_value_heads"] * head
    per_layer = d * d + 2 * d * kv + d * d + 3 * d * inner  # q, k, v, o, gate, up, down
    linear = layers * per_layer
    return (
        4 * linear * seq
        + 6 * lora_params * seq
        + 4 * d * dims["vocab_size"] * scored
        + 12 * layers * seq**2 * d
    )


def build_model(shape: str, base: str, device: torch.device) -> Any:
    """A random-initialised Llama of ``shape`` on ``device`` (bf16 on CUDA, fp32 on a CPU)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if base == "4bit":
        _quantize_4bit(model, dtype, device)
    return model.eval()


def _quantize_4bit(model: Any, compute_dtype: torch.dtype, device: torch.device) -> None:
    """Every decoder linear layer to a bitsandbytes NF4 layer, as a 4-bit load leaves it."""
    import bitsandbytes as bnb

    for parent in list(model.model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            layer = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=False,
                compute_dtype=compute_dtype,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            layer.weight = bnb.nn.Params4bit(
                child.weight.data,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
                module=layer,
            )
            setattr(parent, name, layer.to(device))  # quantizes
            layer.support_avx512bf16_for_cpu = False  # one CPU layout (model/loading.py)
    model.is_loaded_in_4bit = True  # read by peft and fedit's apply_lora


def random_rows(vocab: int, seq: int, count: int) -> list[TokenizedExample]:
    """``count`` rows of random tokens; loss on the second half only."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (count, seq), generator=generator).tolist()
    half = seq // 2
    return [
        TokenizedExample(row, [IGNORE_INDEX] * half + row[half:], "random", False) for row in ids
    ]
