"""Resuming a damaged run folder, and output folders that cannot be used: one line, exit 2,
before the data or the model is loaded, and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedit import experiment
from fedit.cli.main import main
from helpers import tiny_args


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """A real two-round run on the tiny model (copied by each test before damaging it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = tiny_args(tiny_model_dir, out, "eval.base=false")
    assert main(["run", *args]) == 0
    return out, args


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the run gets as far as loading its data (the model comes after)."""

    def refuse(cfg):
        raise AssertionError("the data was loaded before the problem was found")

    monkeypatch.setattr(experiment, "prepare_data", refuse)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _garbage_line(path: Path) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines[:1], "{this is not json\n", *lines[1:]]))


DAMAGE = {
    "truncated adapter": (
        "checkpoints/round_002/adapter_model.safetensors",
        _truncate,
        ["round_002/adapter_model.safetensors is damaged", "delete", "round 1"],
    ),
    "missing adapter": (
        "checkpoints/round_002/adapter_model.safetensors",
        Path.unlink,
        ["round_002", "adapter_model.safetensors", "round 1"],
    ),
    "garbage metrics line": (
        "metrics.jsonl",
        _garbage_line,
        ["metrics.jsonl:2 is not valid JSON"],
    ),
    "garbage run.json": (
        "run.json",
        lambda path: path.write_text('{"run_id": "../elsewhere", "attempts": [1]}'),
        ["run.json is not a run's id and attempts", "overwrite=true"],
    ),
    "garbage saved config": (
        "config.yaml",
        lambda path: path.write_text("model: [unclosed\n"),
        ["config.yaml is not valid YAML"],
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_resume_of_a_damaged_run_is_one_line_before_loading(
    case, finished_run, tmp_path, capsys, nothing_loads
):
    source, args = finished_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    relative, damage, expected = DAMAGE[case]
    damage(run / relative)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    resume = [a for a in args if not a.startswith("output_dir=")]
    code = main(["run", *resume, f"output_dir={run}", "resume=true", "federation.rounds=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("fedit: error: resume:") and len(err.splitlines()) == 1, err
    for words in expected:
        assert words in err, err
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


UNUSABLE_OUTPUT = {
    "a regular file": (lambda tmp: tmp / "taken.txt", "is a file, not a folder"),
    "inside a regular file": (lambda tmp: tmp / "taken.txt" / "run", "is a file, not a folder"),
    "under /proc": (lambda tmp: Path("/proc/fedit-run"), "cannot create"),
}


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
@pytest.mark.parametrize("case", list(UNUSABLE_OUTPUT), ids=list(UNUSABLE_OUTPUT))
def test_unusable_output_dir_is_one_line_before_loading(
    case, resume, tiny_model_dir, tmp_path, capsys, nothing_loads
):
    (tmp_path / "taken.txt").write_text("mine")
    where, expected = UNUSABLE_OUTPUT[case]
    out = where(tmp_path)
    code = main(["run", *tiny_args(tiny_model_dir, out), f"resume={str(resume).lower()}"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fedit: error:"), err
    assert (expected if not resume else "is not a fedit run") in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.txt"]
    assert (tmp_path / "taken.txt").read_text() == "mine"
