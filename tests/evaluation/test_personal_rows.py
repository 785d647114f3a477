"""``compare.personalization``: FedIT+finetune, FedSA and Ditto as per-client rows beside
Local and FedIT."""

from __future__ import annotations

import json

import pytest

from fedit.cli.main import main
from helpers import tiny_args

ROWS = [
    "compare.num_local=4",  # every client has its own Local model
    "compare.centralized=false",
    "data.client_test_fraction=0.2",
    "compare.personalization=[finetune,fedsa,ditto]",
    "eval.generate=false",
]


def test_compare_scores_finetune_per_client_and_reuses_it(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["compare", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out), *ROWS]
    assert main(args) == 0
    stored = json.loads((out / "compare" / "results.json").read_text())
    assert "finetune" not in stored["results"]  # no global score: a model per client
    assert [r["name"] for r in stored["personalization"]] == ["finetune", "fedsa", "ditto"]
    per_client = stored["per_client"]
    for row in ("finetune", "fedsa", "ditto"):
        assert sorted(per_client[row]) == ["0", "1", "2", "3"], row
    ditto_run = out / "compare" / "runs" / "ditto"
    published = json.loads((ditto_run / "personalize.json").read_text())["published"]
    assert published  # the clients that trained have their own adapter, scored as such
    # fine-tuning moved every client's adapter away from FedIT's, so some loss changed
    assert any(per_client["finetune"][c]["loss"] != per_client["fedit"][c]["loss"] for c in "0123")
    for client in range(4):
        assert (out / "compare" / "adapters" / f"finetune-{client}" / "personal_row.json").is_file()
    report = (out / "compare" / "report.md").read_text()
    assert "| client | base | fedit | finetune | fedsa | ditto | local |" in report
    assert "finetune serves better" in report
    weights = out / "compare" / "adapters" / "finetune-0" / "adapter_model.safetensors"
    written = weights.stat().st_mtime_ns
    ditto_metrics = (ditto_run / "metrics.jsonl").read_text()
    assert main(args) == 0  # a re-run reuses every finetune adapter and the Ditto run
    assert weights.stat().st_mtime_ns == written
    assert (ditto_run / "metrics.jsonl").read_text() == ditto_metrics


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["data.client_test_fraction=0"], "set data.client_test_fraction"),
        (["personalization.method=finetune"], "leave personalization.method=none"),
        (["compare.personalization=[ditto2]"], "unknown row 'ditto2'"),
    ],
    ids=["no client test share", "a personalized FedIT row", "unknown row"],
)
def test_compare_rows_refusals_exit_2_with_one_line(
    extra, expected, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    args = ["compare", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out), *ROWS]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
