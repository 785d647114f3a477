"""``fedit compare`` over several seeds: paired differences by hand, reuse, and end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from fedit.cli.main import main
from fedit.config import load_config, save_config
from fedit.evaluation.study import BEST_LOCAL, _same_recipe, roles, summarize
from helpers import tiny_args


def _result(accuracy: list[float], loss: float) -> dict:
    return {
        "heldout": {
            "kind": "heldout",
            "num_examples": len(accuracy),
            "loss": loss,
            "loss_by_category": {"a": loss},
            "accuracy": sum(accuracy) / len(accuracy),
            "accuracy_by_category": {"a": sum(accuracy) / len(accuracy)},
            "per_example": {"accuracy": accuracy},
        }
    }


def _seed(fedit, local_a, local_b, losses=(1.0, 2.0, 3.0)) -> dict:
    models = [{"name": "base"}, {"name": f"local-{local_a[0]}"}, {"name": f"local-{local_b[0]}"}]
    models.append({"name": "fedit"})
    return {
        "models": models,
        "results": {
            "base": _result([0.0] * len(fedit), 5.0),
            f"local-{local_a[0]}": _result(local_a[1], losses[1]),
            f"local-{local_b[0]}": _result(local_b[1], losses[2]),
            "fedit": _result(fedit, losses[0]),
        },
    }


def test_locals_are_matched_by_rank_across_seeds():
    assert roles(
        [{"name": "base"}, {"name": "local-5"}, {"name": "local-2"}, {"name": "fedit"}]
    ) == {
        "base": "base",
        "local#1": "local-5",
        "local#2": "local-2",
        "fedit": "fedit",
    }


def test_paired_differences_by_hand():
    # Seed 1: FedIT [1, 1, 0, 1], local#1 (client 3) [1, 0, 0, 0], local#2 (client 0) [1, 1, 0, 0]
    # Seed 2: FedIT [1, 0, 1, 1], local#1 (client 1) [0, 0, 1, 1], local#2 (client 6) [1, 0, 0, 0]
    per_seed = {
        1: _seed([1, 1, 0, 1], (3, [1, 0, 0, 0]), (0, [1, 1, 0, 0])),
        2: _seed([1, 0, 1, 1], (1, [0, 0, 1, 1]), (6, [1, 0, 0, 0]), losses=(1.5, 2.5, 1.0)),
    }
    summary = summarize(per_seed)
    assert summary["local_clients"]["1"] == {"local#1": "local-3", "local#2": "local-0"}
    rows = {(r["opponent"], r["metric"]): r for r in summary["suites"]["heldout"]["paired"]}
    # vs local#1: differences [0, 1, 0, 1] and [1, 0, 0, 0] -> mean 3/8
    assert rows[("local#1", "accuracy")]["mean"] == pytest.approx(3 / 8)
    # best local per seed on accuracy: seed 1 local#2 (0.5 > 0.25), seed 2 local#1 (0.5 > 0.25)
    # -> differences [0, 0, 0, 1] and [1, 0, 0, 0] -> mean 2/8
    assert rows[(BEST_LOCAL, "accuracy")]["mean"] == pytest.approx(2 / 8)
    # vs base (all wrong): FedIT's accuracy, 6/8; every resample is positive -> FedIT better
    assert rows[("base", "accuracy")]["mean"] == pytest.approx(6 / 8)
    assert rows[("base", "accuracy")]["verdict"] == "FedIT better"
    # loss: per-seed differences FedIT - best local (lowest loss): seed 1 1.0 - 2.0, seed 2
    # 1.5 - 1.0 -> mean -0.25; a t-interval over 2 seeds this far apart includes zero
    best_loss = rows[(BEST_LOCAL, "loss")]
    assert best_loss["mean"] == pytest.approx(-0.25)
    assert best_loss["verdict"] == "no significant difference"
    fedit = summary["suites"]["heldout"]["models"]["fedit"]["accuracy"]["overall"]
    assert fedit["mean"] == pytest.approx(0.75)  # 0.75 in both seeds
    assert fedit["low"] == pytest.approx(0.75) and fedit["high"] == pytest.approx(0.75)


def test_study_end_to_end_and_finished_seeds_are_reused(tiny_model_dir, tmp_path, caplog):
    out = tmp_path / "run"
    args = [
        "compare",
        "configs/quickstart.yaml",
        *tiny_args(tiny_model_dir, out),
        "compare.num_local=1",
        "compare.centralized=false",
        "compare.seeds=[3,4]",
        "data.client_test_fraction=0.2",
    ]
    assert main(args) == 0
    for seed in (3, 4):
        assert (out / f"seed-{seed}" / "global_adapter").is_dir()
        stored = json.loads((out / f"seed-{seed}" / "compare" / "results.json").read_text())
        assert stored["results"]["fedit"]["heldout"]["per_example"]["accuracy"]
    summary = json.loads((out / "study" / "results.json").read_text())
    assert summary["seeds"] == [3, 4]
    assert summary["models"] == ["base", "local#1", "fedit"]
    report = (out / "study" / "report.md").read_text()
    assert "over 2 seeds" in report and "paired bootstrap over seeds x test examples" in report
    # who gains, per client, over the seeds: each row's mean, worst and std, with intervals
    assert sorted(summary["per_client"]["models"]) == ["base", "fedit", "local"]
    assert "## Per client" in report and "| fedit | local | worst |" in report
    assert "lift" not in report  # base is no method, and FedIT is what methods are held to
    first = (out / "seed-3" / "compare" / "results.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert (out / "seed-3" / "compare" / "results.json").stat().st_mtime_ns == first
    assert "seed 3: reusing the finished comparison" in caplog.text
    assert "seed 4: reusing the finished comparison" in caplog.text
    assert json.loads((out / "study" / "results.json").read_text()) == summary


def test_a_seed_marker_from_before_a_new_setting_still_matches():
    """A finished seed is reused when the only difference is a setting fedit gained since (at
    its default); a changed value or another seed runs the seed again."""
    cfg = load_config("configs/quickstart.yaml", ["seed=43"])
    older = yaml.safe_load(save_config(cfg))
    del older["flower"]["rejoin_timeout"]  # written by a fedit that had no such key
    marker = {"seed": 43, "config": yaml.safe_dump(older)}
    assert _same_recipe(marker, 43, cfg)
    assert not _same_recipe(marker, 44, cfg)
    changed = load_config("configs/quickstart.yaml", ["seed=43", "flower.rejoin_timeout=5"])
    assert not _same_recipe(marker, 43, changed)
    assert not _same_recipe({"seed": 43, "config": ": not yaml ["}, 43, cfg)
    assert not _same_recipe(None, 43, cfg)


def test_bad_seeds_are_one_line_errors(tmp_path, capsys):
    code = main(
        ["compare", "configs/quickstart.yaml", f"output_dir={tmp_path}", "compare.seeds=[1,1]"]
    )
    assert code == 2
    assert "compare.seeds: seeds repeat in [1, 1]" in capsys.readouterr().err


def test_one_seed_findings_claim_beats_only_when_the_interval_excludes_zero():
    from fedit.evaluation.compare_report import findings

    names = ["base", "local-0", "fedit"]

    def results(fedit, local):
        return {
            "base": _result([0.0] * len(fedit), 5.0),
            "local-0": _result(local, 2.0),
            "fedit": _result(fedit, 1.0),
        }

    # 11 of 20 right against 10 of 20, on mostly the same examples: a lead, not significant
    close = findings(names, results([1.0] * 11 + [0.0] * 9, [1.0] * 10 + [0.0] * 10))
    assert "leads the best Local-k, not significantly" in close[0], close
    # 18 of 20 against 2 of 20: significant
    far = findings(names, results([1.0] * 18 + [0.0] * 2, [1.0] * 2 + [0.0] * 18))
    assert "beats every Local-k" in far[0] and "paired bootstrap over the test examples" in far[0]


def test_compare_scores_every_model_on_every_clients_own_share(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = ["compare", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]
    args += ["compare.num_local=4", "compare.centralized=false", "data.client_test_fraction=0.2"]
    assert main(args) == 0
    stored = json.loads((out / "compare" / "results.json").read_text())
    per_client = stored["per_client"]
    partition = json.loads((out / "partition.json").read_text())
    names = [m["name"] for m in stored["models"]]  # Local-k for every client FedIT trained
    assert set(per_client) == set(names) and len(names) >= 4
    for scores in per_client.values():
        assert [scores[str(c)]["num_examples"] for c in range(4)] == partition["client_test"]
    report = (out / "compare" / "report.md").read_text()
    assert "## Per client" in report and "compared with their own Local model" in report
    assert (out / "compare" / "per_client_gain.png").is_file()
    assert (out / "compare" / "curve_accuracy.png").is_file()


def test_fairness_by_hand():
    from fedit.evaluation.per_client import fairness, gains

    per_client = {
        "fedit": {"0": {"accuracy": 0.5}, "1": {"accuracy": 0.3}, "2": {"accuracy": 0.7}},
        "local-0": {"0": {"accuracy": 0.6}, "1": {"accuracy": 0.0}, "2": {"accuracy": 0.1}},
        "local-2": {"0": {"accuracy": 0.2}, "1": {"accuracy": 0.1}, "2": {"accuracy": 0.4}},
    }
    summary = fairness(per_client, "accuracy")
    # FedIT over clients: mean 0.5, worst 0.3, population std sqrt((0 + 0.04 + 0.04) / 3)
    assert summary["fedit"]["mean"] == pytest.approx(0.5)
    assert summary["fedit"]["worst"] == pytest.approx(0.3)
    assert summary["fedit"]["std"] == pytest.approx((0.08 / 3) ** 0.5)
    # client 0: 0.5 < its own 0.6; client 2: 0.7 > its own 0.4; client 1 has no Local model
    assert summary["fedit_helps"] == {"clients": 2, "helped": 1}
    assert summary["helps"]["fedit"] == {"vs_local": {"clients": 2, "helped": 1}}
    assert gains(per_client, "accuracy") == pytest.approx({"0": -0.1, "2": 0.3})
    # the composite row: client 0 by local-0 (0.6), client 2 by local-2 (0.4)
    assert summary["local"] == pytest.approx({"mean": 0.5, "worst": 0.4, "std": 0.1})


def test_fairness_counts_help_against_local_and_fedit_for_every_model():
    from fedit.evaluation.per_client import fairness, gains

    def scores(*values):
        return {str(c): {"loss": v} for c, v in enumerate(values)}

    per_client = {
        "fedit": scores(1.0, 2.0, 3.0),
        "ditto": scores(0.5, 2.5, 1.0),  # lower loss is better
        "local-0": scores(0.8, 9.0, 9.0),
        "local-1": scores(9.0, 2.2, 9.0),
        "local-2": scores(9.0, 9.0, 2.0),
    }
    summary = fairness(per_client, "loss")
    # ditto vs own Local (0.8, 2.2, 2.0): better on clients 0 and 2; vs FedIT: on 0 and 2
    assert summary["helps"]["ditto"] == {
        "vs_local": {"clients": 3, "helped": 2},
        "vs_fedit": {"clients": 3, "helped": 2},
    }
    assert summary["local"]["worst"] == pytest.approx(2.2)  # loss: the worst is the highest
    assert gains(per_client, "loss", "ditto") == pytest.approx({"0": -0.3, "1": 0.3, "2": -1.0})
