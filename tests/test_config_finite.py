"""Every float key of the config must be a finite number: nan and inf stop at the boundary."""

from __future__ import annotations

import dataclasses
import re
import types
import typing

import pytest

from fedit.cli.main import main
from fedit.config import Config, ConfigError, load_config


def _float_keys(cls: type = Config, prefix: str = "", lists: bool = False) -> list[str]:
    """Dotted names of every field typed float, float | None or list[float], at any depth
    (with ``lists``, only the list[float] ones)."""
    keys = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            keys += _float_keys(annotation, f"{prefix}{field.name}.", lists)  # type: ignore[arg-type]
            continue
        if lists and typing.get_origin(annotation) is not list:
            continue
        options = (
            typing.get_args(annotation)
            if typing.get_origin(annotation) in (typing.Union, types.UnionType, list)
            else (annotation,)
        )
        if float in options:
            keys.append(f"{prefix}{field.name}")
    return keys


FLOAT_KEYS = _float_keys()
LIST_KEYS = set(_float_keys(lists=True))


def test_the_walk_finds_the_float_keys():
    assert {"train.lr", "lora.dropout", "federation.fraction_fit", "strategy.tau"} <= set(
        FLOAT_KEYS
    )
    assert len(FLOAT_KEYS) >= 15


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan", "-.inf", "1e400"])
def test_every_float_key_must_be_finite(key, value):
    if key in LIST_KEYS:  # a list of floats: each entry must be finite
        value = f"[1.0,{value}]"
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: got .*, expected (a finite|float)"):
        load_config(None, [f"{key}={value}"])


def test_nan_learning_rate_is_one_line_and_nothing_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "train.lr=nan", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedit: error:") and "train.lr" in err and len(err.splitlines()) == 1
    assert not out.exists()
