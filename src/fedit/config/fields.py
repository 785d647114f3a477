"""The pieces every config section is built from: ``ConfigError``, fields with help, choices."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A configuration or input problem that the user must fix. The CLI exits with code 2."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def option(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with a help string (mutable defaults are wrapped in a factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> list[str]:
    """A one-item problem list when ``value`` is not one of ``choices``, else []."""
    if value not in choices:
        return [f"{key}: unknown value {value!r}; choose one of {', '.join(choices)}"]
    return []
