"""Checks that files fedit reads back are whole, before anything heavy loads them.

Adapter folders (``--adapter``, checkpoints) are read by peft only after the base model has
loaded, and a damaged file then ends in a library traceback. These checks read a few bytes and
fail at once with a one-line ``ConfigError`` that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedit.config import ConfigError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # peft's, preferred first
_MAX_HEADER_BYTES = 100_000_000  # the safetensors format's own limit


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file, or None when it is.

    Reads only the header: its tensors' byte ranges must end exactly where the file does, so a
    truncated or padded file is caught without loading a tensor.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little")
            if len(prefix) < 8 or length > min(size - 8, _MAX_HEADER_BYTES):
                return "its header is cut short: truncated, or not a safetensors file"
            header = json.loads(handle.read(length))
        ends = [
            int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"
        ]
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its header is not valid safetensors"
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        return f"it holds {size} bytes where its header promises {expected}: truncated or damaged"
    return None


def check_adapter_folder(folder: Path, name: str = "--adapter") -> None:
    """Fail unless ``folder`` is a PEFT adapter whose config and weights are whole.

    Args:
        folder: The adapter folder.
        name: How the error names where the folder came from (a flag, or ``resume``).

    Raises:
        ConfigError: No or unreadable ``adapter_config.json``, no weights, or damaged weights.
    """
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise ConfigError(f"{name}: {folder} is not a PEFT adapter (no {ADAPTER_CONFIG})")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{name}: {config} is not readable JSON ({err})") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}: {config} must hold a JSON object")
    weights = next((folder / w for w in ADAPTER_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise ConfigError(
            f"{name}: {folder} has no adapter weights ({ADAPTER_WEIGHTS[0]}); "
            "it was not saved completely"
        )
    problem = safetensors_problem(weights) if weights.suffix == ".safetensors" else None
    if problem:
        raise ConfigError(f"{name}: {weights} is damaged: {problem}")
