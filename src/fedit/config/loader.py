"""Config loading: YAML files, dotted ``key=value`` overrides, type checks, help rows.

Problems are collected and reported together, spelled as on the command line (``train.lr``), so
a user fixes a config in one pass.

Example:
    cfg = load_config("configs/quickstart.yaml", ["federation.rounds=3", "train.lr=1e-3"])
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from fedit.config.fields import ConfigError
from fedit.config.schema import Config


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "lora.target_modules=[q_proj,k_proj]"]`` into a nested dict.

    Values are parsed as YAML scalars or flow lists, so ``true``, ``3``, ``1e-3`` and ``[a,b]``
    get their natural types.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.lr=1e-3")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _coerce(key: str, value: Any, annotation: Any, problems: list[str]) -> Any:
    """Check ``value`` against a field annotation, converting the harmless cases (int -> float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            trial: list[str] = []
            converted = _coerce(key, value, option, trial)
            if not trial:
                return converted
        problems.append(f"{key}: got {value!r}, expected {_type_name(annotation)}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            problems.append(f"{key}: got {value!r}, expected a list")
            return value
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [_coerce(key, v, item_type, problems) for v in value]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: got {value!r}, expected true or false")
        return value
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        problems.append(f"{key}: got {value!r}, expected an integer")
        return value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(key, float(value), problems)
        if isinstance(value, str):
            try:
                return _finite(key, float(value), problems)
            except ValueError:
                pass
        problems.append(f"{key}: got {value!r}, expected a number")
        return value
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: got {value!r}, expected a string")
        return value
    return value


def _finite(key: str, number: float, problems: list[str]) -> float:
    """nan and inf parse as floats but break training late: refuse them here."""
    if not math.isfinite(number):
        problems.append(f"{key}: got {number!r}, expected a finite number (not nan or inf)")
    return number


def _type_name(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" or null" if type(None) in typing.get_args(annotation) else "")


def _build(cls: type, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``raw``; every unknown key and bad type lands in problems."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            suggestion = ", ".join(sorted(known))
            problems.append(f"{dotted}: unknown key; valid keys here are {suggestion}")
            continue
        annotation = hints[key]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                problems.append(f"{dotted}: expected a section (mapping), got {value!r}")
                continue
            kwargs[key] = _build(annotation, value, dotted + ".", problems)
        else:
            kwargs[key] = _coerce(dotted, value, annotation, problems)
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a Config. Raises ConfigError listing every problem."""
    problems: list[str] = []
    cfg = _build(Config, raw, "", problems)
    if not problems:
        problems = cfg.validate()
    if problems:
        raise ConfigError(problems)
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(err, 'problem', err)}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply dotted overrides."""
    raw = read_yaml(path) if path is not None else {}
    raw = _merge(raw, parse_overrides(overrides or []))
    return config_from_dict(raw)


def save_config(cfg: Config) -> str:
    """The fully resolved config as YAML text."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_settings(saved: dict[str, Any], cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Key -> (saved value, ``cfg``'s value) for each setting where a saved config (as read
    from YAML) and ``cfg`` differ. A key the saved config lacks was added to fedit after it was
    written, so it counts at today's default: adding a setting does not orphan earlier runs."""
    old = flatten(Config().to_dict()) | flatten(saved)
    new = flatten(cfg.to_dict())
    return {
        k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
    }


def field_help(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, str]]:
    """Every leaf key with its default and help, for ``fedit run --help``."""
    rows: list[tuple[str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            rows += field_help(annotation, f"{prefix}{f.name}.")  # type: ignore[arg-type]
        else:
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            rows.append((f"{prefix}{f.name}", default, f.metadata.get("help", "")))
    return rows
