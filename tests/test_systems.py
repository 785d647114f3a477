"""A run on the simulated clock, end to end: its records, its report, and a bad profile file."""

from __future__ import annotations

import json

import pytest

from fedit.cli.main import main
from helpers import tiny_args

HEADER = "client_id,tokens_per_second,down_bytes_per_second,up_bytes_per_second\n"


def test_a_run_records_simulated_time_and_the_report_plots_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir,
        out,
        "federation.system.profiles=sampled",
        "eval.target_loss=1000",  # reached at round 0
        "eval.target_accuracy=1.0",
        "eval.generate=false",
        "federation.deadline=1e9",  # nobody misses it: the waste is recorded as zero
        "federation.over_select=1.5",
    )
    assert main(["run", *args]) == 0
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert "system" not in rounds[0]
    elapsed = 0.0
    for record in rounds[1:]:
        system = record["system"]
        times = system["clients"]
        assert sorted(times) == sorted(record["train_loss"]) and times
        assert len(record["selected_clients"]) == 3  # ceil(2 * 1.5)
        assert system["late"] == [] and system["wasted"]["tokens"] == 0
        assert system["duration"] == max(t["total"] for t in times.values())
        for client, t in times.items():
            metrics = record["client_metrics"][client]
            assert t["compute"] > 0 and t["download"] > 0 and metrics["tokens"] > 0
        elapsed += system["duration"]
        assert system["elapsed"] == pytest.approx(elapsed)
    report = (out / "report.md").read_text()
    assert "## Simulated time" in report and "(simulated_time.png)" in report
    assert (out / "simulated_time.png").stat().st_size > 0
    assert "Time to eval.target_loss=1000: 0 h (0 s), at round 0" in report
    assert "Time to eval.target_accuracy=1: not reached" in report
    assert "Missed the deadline: 0 client rounds" in report


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("0,10,1,1\n1,10,1,1\n2,10,1,1\n", "no row for client 3"),
        ("0,10,1,1\n1,-3,1,1\n2,1,1,1\n3,1,1,1\n", "profiles.csv:3: tokens_per_second must be > 0"),
    ],
    ids=["missing client", "negative speed"],
)
def test_a_bad_profile_csv_exits_2_with_one_line_and_writes_nothing(
    rows, expected, tiny_model_dir, tmp_path, capsys
):
    path = tmp_path / "profiles.csv"
    path.write_text(HEADER + rows)
    out = tmp_path / "run"
    overrides = ["federation.system.profiles=csv", f"federation.system.csv={path}"]
    code = main(["run", *tiny_args(tiny_model_dir, out, *overrides)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error: federation.system.csv") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists()
