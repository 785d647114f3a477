"""A backdoor run measures its attack success rate whenever it generates, and reports it."""

from __future__ import annotations

import json

from fedit.cli.main import main
from helpers import tiny_args


def test_backdoor_run_logs_prints_and_reports_its_success_rate(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    extra = ("attack.kind=backdoor", "attack.clients=[1]", "federation.rounds=1")
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out, *extra)]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    generated = [r for r in records if "accuracy" in (r.get("eval") or {})]
    assert [r["round"] for r in generated] == [0, 1]  # the base model and the final round
    for record in generated:
        assert 0.0 <= record["eval"]["backdoor_asr"] <= 1.0
    report = (out / "report.md").read_text()
    assert "Backdoor success rate" in report and "base model" in report
    assert "backdoor ASR" in capsys.readouterr().out  # a row of the final results table
