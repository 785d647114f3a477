"""A run's adapters by name: its global adapter and every client's personal one.

With ``personalization.method`` set (docs/personalization.md), each client publishes its own
adapter as ``RUN/personal/client-<id>/``, a PEFT folder like ``RUN/global_adapter``. ``fedit serve
--run RUN`` serves them as ``global`` and ``client-<id>``; ``fedit export --run RUN --client ID``
exports one. A deployed site keeps the same layout under its own state folder, so the same
commands work there on ``--run STATE_DIR/<run id>``.

Personal adapters share their shape, and a server may hold thousands: ``ServedModels`` keeps one
swap slot per shape (``slot_key``) instead of one resident adapter per client.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from fedit.client.state import PERSONAL_FOLDER as PERSONAL_DIR
from fedit.client.state import PERSONAL_PREFIX as CLIENT_PREFIX
from fedit.config import ConfigError
from fedit.integrity import check_adapter_folder

GLOBAL_DIR = "global_adapter"
_CLIENT = re.compile(r"^client-(0|[1-9][0-9]*)$")
# The adapter_config.json fields that make two adapters interchangeable in one peft slot.
_SHAPE_FIELDS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "fan_in_fan_out")


def client_name(client: int) -> str:
    """The model id (and folder name) of a client's personal adapter."""
    return f"{CLIENT_PREFIX}{client}"


def _check_run(run: Path) -> None:
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"--run: {run} is not a fedit run folder (no config.yaml)")


def personal_adapters(run: Path) -> dict[int, Path]:
    """Client id -> ``RUN/personal/client-<id>/``, for every client that published one.

    Raises:
        ConfigError: a folder there that is not a whole PEFT adapter (named).
    """
    folder = run / PERSONAL_DIR
    found: dict[int, Path] = {}
    if folder.is_dir():
        for item in sorted(folder.iterdir()):
            match = _CLIENT.match(item.name)
            if match and item.is_dir():
                check_adapter_folder(item)
                found[int(match.group(1))] = item
    return dict(sorted(found.items()))


def global_adapter(run: Path) -> Path | None:
    """``RUN/global_adapter``, or None when the run has none (fedsa without a mean B)."""
    _check_run(run)
    path = run / GLOBAL_DIR
    if not path.exists():
        return None
    check_adapter_folder(path)
    return path


def run_method(run: Path) -> str:
    """The run's ``personalization.method`` (``none`` for runs from before it existed)."""
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    return str((cfg.get("personalization") or {}).get("method", "none"))


def client_adapter(run: Path, client: int) -> Path:
    """One client's personal adapter folder.

    Raises:
        ConfigError: the run or the client's folder does not exist (both named).
    """
    _check_run(run)
    path = run / PERSONAL_DIR / client_name(client)
    if not path.is_dir():
        published = sorted(personal_adapters(run))
        raise ConfigError(
            f"--client: {path} does not exist: client {client} has no personal adapter "
            f"(personalization.method={run_method(run)}; clients with one: {published or 'none'})"
        )
    check_adapter_folder(path)
    return path


def slot_key(adapter: Path) -> str:
    """What an adapter's shape is, as far as sharing a peft slot goes."""
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    shape = {name: config.get(name) for name in _SHAPE_FIELDS}
    if isinstance(shape["target_modules"], list):
        shape["target_modules"] = sorted(shape["target_modules"])
    return json.dumps(shape, sort_keys=True)
