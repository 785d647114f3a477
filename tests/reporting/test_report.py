"""report.md and the plots, built from a run directory's files alone."""

import json

import yaml

from fedit.config import load_config
from fedit.reporting.report import summary_rows, write_report

HISTORY = [
    {
        "round": 0,
        "eval": {
            "loss": 2.0,
            "perplexity": 7.39,
            "accuracy": 0.1,
            "accuracy_by_category": {"math": 0.0, "text": 0.2},
        },
    },
    {
        "round": 1,
        "selected_clients": [0, 2],
        "train_loss": {"0": 1.5, "2": 1.0},
        "num_examples": {"0": 10, "2": 30},
        "lr": 3e-4,
        "eval": None,
        "seconds": {"fit": 2.0, "aggregate": 0.1, "eval": 0.0},
        "client_metrics": {
            "0": {
                "tokens": 100,
                "seconds": 1.0,
                "padding_waste": 0.05,
                "compression_error": {"max_abs_error": 1e-4, "relative_error": 0.01},
            },
            "2": {
                "tokens": 300,
                "seconds": 1.0,
                "padding_waste": 0.15,
                "compression_error": {"max_abs_error": 1e-4, "relative_error": 0.03},
            },
        },
        "dropped_clients": [3],
        "communication": {"bytes_down": 2_000_000, "bytes_up": 1_000_000},
    },
    {
        "round": 2,
        "selected_clients": [1, 2],
        "train_loss": {"1": 0.5, "2": 0.7},
        "num_examples": {"1": 20, "2": 30},
        "lr": 1e-4,
        "eval": {
            "loss": 0.8,
            "perplexity": 2.23,
            "accuracy": 0.6,
            "accuracy_by_category": {"math": 0.5, "text": 0.7},
        },
        "seconds": {"fit": 2.0, "aggregate": 0.1, "eval": 1.0},
    },
]


def _run_dir(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(load_config().to_dict()))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    (tmp_path / "partition.json").write_text(
        json.dumps(
            {
                "num_train": 60,
                "num_test": 4,
                "tokenization": {"total": 60, "truncated": 3, "dropped_no_labels": 1},
            }
        )
    )
    return tmp_path


def test_summary_rows_pick_base_and_last_evaluated_round():
    rows = summary_rows(HISTORY)
    assert [label for label, _ in rows] == ["base model", "FedIT (round 2)"]
    assert rows[1][1]["accuracy"] == 0.6


def test_report_tables_and_plots(tmp_path):
    run_dir = _run_dir(tmp_path)
    report = write_report(run_dir).read_text()
    assert "| base model | 2.0000 | 7.39 | 0.100 | 0.00 | 0.20 |" in report
    assert "| FedIT (round 2) | 0.8000 | 2.23 | 0.600 | 0.50 | 0.70 |" in report
    # 1.2500 is the mean of 1.5 and 1.0
    assert "| 1 | 0, 2 (dropped 3) | 1.2500 | – | – | 3.00e-04 | 2.00 / 1.00 | 2.1 |" in report
    assert "| 2 | 1, 2 | 0.6000 | 0.8000 | 0.600 | 1.00e-04 | – | 3.1 |" in report
    assert "total 3.00 MB over 2 client rounds" in report
    assert "Upload per client per round: 0.50 MB" in report
    assert "reconstruction error of compressed uploads: 2.00e-02" in report
    assert "Dropped out (selected, never answered): 1 client rounds" in report
    assert "400 tokens, 2.0 s (200 tokens/s)" in report
    assert "Padding waste: 10.0%" in report
    assert "Truncated at train.cutoff_len: 3 of 60" in report
    for name in ("loss.png", "accuracy.png", "accuracy_by_category.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
