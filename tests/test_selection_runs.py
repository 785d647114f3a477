"""Selection from the server's records, end to end: a run with oort, and the refusals."""

from __future__ import annotations

import json

import pytest

from fedit.cli.main import main
from helpers import tiny_args


def test_a_run_with_oort_on_sampled_profiles_completes(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir,
        out,
        "federation.selection=oort",
        "federation.system.profiles=sampled",
        "federation.oort.exploration_factor=0.5",
        "federation.oort.exploration_min=0.5",
        "eval.generate=false",
        "eval.base=false",
    )
    assert main(["run", *args]) == 0
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    # Round 1 knows no one: both seats explore. Round 2 exploits one client it heard from
    # (int(2 · (1 - 0.5)) = 1) and explores one it did not.
    first, second = (set(r["selected_clients"]) for r in rounds)
    assert len(first) == len(second) == 2
    assert len(second & first) == 1
    assert all(r["system"]["duration"] > 0 for r in rounds)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["federation.selection=oort", "privacy.level=client"],
            "federation.selection=oort: refused with privacy.level=client; it picks clients "
            "by their own data",
        ),
        (
            ["federation.selection=diverse", "privacy.level=example"],
            "federation.selection=diverse: refused with privacy.level=example",
        ),
        (["federation.selection=fastest"], "federation.selection=fastest: picks by the"),
    ],
    ids=["oort under client DP", "diverse under example DP", "fastest without profiles"],
)
def test_refused_selection_exits_2_with_one_line_and_writes_nothing(
    overrides, expected, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    privacy = ["privacy.noise_multiplier=1.0"] if any("privacy" in o for o in overrides) else []
    code = main(["run", *tiny_args(tiny_model_dir, out, *overrides, *privacy)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    # One line, and one problem about the selection (not also the accountant's own refusal).
    assert len(err.splitlines()) == 1 and err.count(overrides[0]) == 1, err
    assert not out.exists()
