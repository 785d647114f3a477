"""The configs shipped inside the package (``src/fedit/configs``), named by a CONFIG argument.

An installed wheel has no ``configs/`` folder around it, so ``fedit run quickstart`` reads the
packaged copy; in the repository, ``configs/quickstart.yaml`` is a link to that same file.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fedit.config.fields import ConfigError


def builtin_configs() -> dict[str, Path]:
    """The packaged configs by name: ``{"quickstart": .../fedit/configs/quickstart.yaml}``."""
    folder = resources.files("fedit") / "configs"
    return {
        entry.name.removesuffix(".yaml"): Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def quickstart_path() -> Path:
    """The built-in quickstart config: what ``fedit run`` with no CONFIG runs."""
    return builtin_configs()["quickstart"]


def resolve_config(item: str) -> Path:
    """A CONFIG argument as a file: a file that exists, else the name of a built-in config.

    Raises:
        ConfigError: a missing ``configs/quickstart.yaml`` (the README's path, run outside the
            repository): the message names the built-in copy.
    """
    path = Path(item)
    if path.is_file():
        return path
    builtin = builtin_configs()
    if item in builtin:
        return builtin[item]
    if path.stem in builtin and path.suffix == ".yaml":
        raise ConfigError(
            f"{item}: config file not found; for the copy built into fedit, "
            f"write {path.stem} instead (fedit run {path.stem})"
        )
    return path  # read_yaml says that it is missing
