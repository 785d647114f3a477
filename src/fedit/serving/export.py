"""Export a run's adapter for use outside fedit (``fedit export``).

``--merge`` folds the LoRA weights into the base weights (peft's ``merge_and_unload``) and writes
a standalone Hugging Face model folder: config, safetensors weights, generation config and the
tokenizer. It loads with plain ``AutoModelForCausalLM.from_pretrained(out)``, needs neither peft
nor the base model, and gives the same greedy output as base plus adapter.

Without ``--merge`` the folder holds the adapter (a few MB) plus the tokenizer, with
``base_model_name_or_path`` pointing at the resolved base model (hub id or local folder), so
``AutoModelForCausalLM.from_pretrained(out)`` with peft installed, or
``peft.AutoPeftModelForCausalLM.from_pretrained(out)``, loads base plus adapter.

An adapter trained on a 4-bit or 8-bit base (``model.quantization``) learned to correct the
quantized weights, not the original ones. Merging it into the quantized layers loses precision
(peft re-quantizes W + B·A and warns of rounding errors), so ``--merge`` first loads the base
quantized as in training, dequantizes it (transformers' ``dequantize``), and merges into that:
the merged model computes what the quantized base plus adapter computed, in full precision.

Both write ``fedit_export.json``: the source adapter, the base model and the prompt template the
adapter was trained with (prompt the exported model the same way). The folder is written to a
temporary sibling and renamed into place, so a failed export leaves nothing half-written.

``--run RUN --client ID`` exports one client's personal adapter (``RUN/personal/client-<id>``,
``serving.personal``); for fedsa that folder already pairs the global A with the client's own B.
``fedit_export.json`` then also names the client and the run's ``personalization.method``.

Example:
    fedit export --adapter runs/quickstart/global_adapter --out exported/quickstart --merge
    fedit export --run runs/ditto --client 3 --out exported/client-3 --merge
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from fedit.config import ConfigError, ModelConfig
from fedit.integrity import check_adapter_folder
from fedit.io import atomic_directory, atomic_write_json
from fedit.serving.generate import run_quantization, run_settings
from fedit.serving.personal import client_adapter, global_adapter, run_method

logger = logging.getLogger(__name__)

EXPORT_INFO = "fedit_export.json"


def export_source(
    adapter: str | None, run: str | None, client: int | None
) -> tuple[Path, dict[str, object]]:
    """The folder ``fedit export`` reads (``--adapter``, or ``--run`` with ``--client``) and
    what ``fedit_export.json`` says of where it came from.

    Raises:
        ConfigError: ``--client`` without ``--run``, both ``--adapter`` and ``--run``, neither,
            or a run without the adapter asked for (each naming the flag).
    """
    if client is not None and run is None:
        raise ConfigError(
            "--client: needs --run RUN (a client's adapter is RUN/personal/client-<id>)"
        )
    if adapter is not None and run is not None:
        raise ConfigError("--adapter: give either --adapter DIR or --run RUN, not both")
    if run is None:
        if adapter is None:
            raise ConfigError("--adapter: give the adapter folder, or --run RUN [--client ID]")
        return Path(adapter), {}
    folder = Path(run)
    if client is not None:
        return client_adapter(folder, client), {"client": client, "method": run_method(folder)}
    found = global_adapter(folder)
    if found is None:
        raise ConfigError(
            f"--run: {folder} has no global_adapter (personalization.method="
            f"{run_method(folder)}); export a client's with --client ID"
        )
    return found, {"client": None, "method": run_method(folder)}


def _check_paths(adapter: Path, out: Path, overwrite: bool) -> None:
    check_adapter_folder(adapter)
    resolved_out, resolved_adapter = out.resolve(), adapter.resolve()
    if resolved_out == resolved_adapter or resolved_adapter in resolved_out.parents:
        raise ConfigError(f"--out: {out} must not be the adapter folder or inside it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out: {out} is not empty; pass --overwrite to replace it")


def _base_name(adapter: Path, model_name: str | None) -> tuple[str, str]:
    recorded, template = run_settings(adapter)
    name = model_name or recorded
    if not name:
        raise ConfigError("--model: the adapter does not record its base model; pass --model")
    return name, template or "alpaca"


def _write_merged(
    adapter: Path, target: Path, base_name: str, dtype: str, quantization: str
) -> None:
    from peft import PeftModel

    from fedit.model.loading import TORCH_DTYPES, load_model

    if quantization == "none":
        base, tokenizer = load_model(ModelConfig(name=base_name, dtype=dtype, device="cpu"))
    else:
        # Quantize where training did (the GPU, when there is one), then dequantize: the
        # weights the adapter was trained against, now plain tensors of ``dtype``.
        cfg = ModelConfig(name=base_name, dtype=dtype, device="auto", quantization=quantization)
        base, tokenizer = load_model(cfg)
        base = base.dequantize(dtype=TORCH_DTYPES[dtype])
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(target)  # safetensors
    tokenizer.save_pretrained(target)


def _write_adapter(adapter: Path, target: Path, base_name: str) -> None:
    from transformers import AutoTokenizer

    from fedit.model.loading import resolve_model_path

    base_path = resolve_model_path(base_name)
    for item in adapter.iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_path
    (target / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    AutoTokenizer.from_pretrained(base_path).save_pretrained(target)


def export_model(
    adapter: Path,
    out: Path,
    merge: bool = False,
    model_name: str | None = None,
    dtype: str = "fp32",
    overwrite: bool = False,
    provenance: dict[str, object] | None = None,
) -> Path:
    """Write ``adapter`` (merged into its base model, or as a self-contained adapter) to ``out``.

    Args:
        adapter: A PEFT adapter folder, e.g. ``RUN/global_adapter``.
        out: The folder to write (replaced atomically).
        merge: Merge the LoRA weights into the base model (a standalone model); a base the
            run quantized is dequantized first.
        model_name: Base model (default: the run's ``model.name``).
        dtype: Weight dtype of the merged model (fp32, bf16 or fp16).
        overwrite: Replace a non-empty ``out``.
        provenance: More for ``fedit_export.json`` (``export_source``'s client and method).

    Returns:
        ``out``.

    Raises:
        ConfigError: Not a whole adapter, unknown base model, or an ``out`` that would be
            clobbered.
    """
    _check_paths(adapter, out, overwrite)
    base_name, template = _base_name(adapter, model_name)
    quantization = run_quantization(adapter) if merge else "none"
    start = time.perf_counter()
    with atomic_directory(out) as tmp:
        if merge:
            _write_merged(adapter, tmp, base_name, dtype, quantization)
        else:
            _write_adapter(adapter, tmp, base_name)
        info = {
            "source_adapter": str(adapter.resolve()),
            "base_model": base_name,
            "template": template,
            "merged": merge,
            "dtype": dtype if merge else None,
            "dequantized_from": quantization if quantization != "none" else None,
            **(provenance or {}),
        }
        atomic_write_json(tmp / EXPORT_INFO, info)
    logger.info(
        "exported %s (%s) to %s in %.1f s",
        adapter,
        "merged" if merge else "adapter",
        out,
        time.perf_counter() - start,
    )
    return out
