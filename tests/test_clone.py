"""What a config, example or test of fedit needs works from a plain clone of the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedit.cli.main import main
from fedit.config import load_config
from helpers import tracked_files

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" + "shared"  # written in two parts so that this file does not match itself
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
CONFIGS = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files alone, as a clone has them, in a folder with nothing beside it.

    Files are copied from the working tree, so an edit is checked before it is committed, but an
    untracked file (data not yet added to git) is left out, as a clone would lack it.
    """
    root = tmp_path_factory.mktemp("clone") / "fedit"
    for name in tracked_files():
        source = ROOT / name
        if source.is_file():  # skips a tracked file deleted in the working tree
            target = root / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root


def test_no_tracked_file_refers_outside_the_repository() -> None:
    hits = []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():
            continue
        content = path.read_bytes()
        if b"\0" in content:  # binary: an image, a checkpoint
            continue
        lines = content.decode("utf-8", errors="replace").splitlines()
        hits += [
            f"{name}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if OUTSIDE in line
        ]
    assert not hits, f"tracked files refer to {OUTSIDE}, outside the repository:\n" + "\n".join(
        hits
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_names_only_data_inside_the_clone(
    name: str, clone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(clone)  # the README runs every config from the repository root
    assert main(["validate", f"configs/{name}"]) == 0
    cfg = load_config(f"configs/{name}")
    for key, source in (
        ("data.source", cfg.data.source),
        ("data.test_source", cfg.data.test_source),
    ):
        if source is None or source == "synthetic":
            continue
        if not (source.endswith(DATA_SUFFIXES) or source.startswith((".", "/", "~"))):
            continue  # a hub dataset id, such as databricks/databricks-dolly-15k
        path = (clone / Path(source).expanduser()).resolve()
        assert path.is_relative_to(clone.resolve()), f"{name}: {key}={source} is outside the clone"
        assert path.exists(), f"{name}: {key}={source} is not among the tracked files"


def test_shakespeare_config_loads_its_data_from_a_clone(
    clone: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(clone)
    assert main(["validate", "configs/shakespeare.yaml"]) == 0
    code = main(["partition", "configs/shakespeare.yaml"])  # reads both files: validate does not
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "800 training examples, 260 held out" in printed.out
    readme = (clone / "data" / "shakespeare" / "README.md").read_text(encoding="utf-8")
    assert "BSD-2-Clause" in readme and "public domain" in readme  # the licence beside the data
