"""A backdoor run measures its attack success rate whenever it generates, and reports it."""

from __future__ import annotations

from pathlib import Path

from fedit.config import load_config
from fedit.experiment import run_experiment
from helpers import tiny_args

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_backdoor_run_logs_and_reports_its_success_rate(tiny_model_dir, tmp_path):
    extra = ("attack.kind=backdoor", "attack.clients=[1]", "federation.rounds=1")
    cfg = load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "run", *extra))
    outcome = run_experiment(cfg)
    generated = [r for r in outcome.history if "accuracy" in (r.get("eval") or {})]
    assert [r["round"] for r in generated] == [0, 1]  # the base model and the final round
    for record in generated:
        assert 0.0 <= record["eval"]["backdoor_asr"] <= 1.0
    report = (outcome.run_dir / "report.md").read_text()
    assert "Backdoor success rate" in report and "base model" in report
