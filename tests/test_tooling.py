"""The tooling's configuration: what `make check` covers cannot shrink unnoticed."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path("src/fedit")


def test_mypy_checks_the_whole_package() -> None:
    # `make check` runs a bare `mypy`, which checks only the paths in [tool.mypy] files.
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    files = [Path(entry) for entry in config["tool"]["mypy"]["files"]]
    covering = [path for path in files if path == PACKAGE or path in PACKAGE.parents]
    assert covering, f"[tool.mypy] files must include {PACKAGE} (or a folder above it): {files}"
