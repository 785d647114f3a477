"""``fedit compare`` and ``fedit eval`` end to end on the tiny Llama."""

from __future__ import annotations

import json

import pytest
import yaml

from fedit.cli.main import main
from fedit.config import ConfigError, load_config
from fedit.evaluation.runner import evaluate_suites, load_for_eval
from fedit.evaluation.suites import load_suites, parse_suite
from fedit.io import read_jsonl
from fedit.server.observer import RunObserver
from helpers import tiny_args


def _compare(tiny_model_dir, out, *extra):
    return main(
        [
            "compare",
            "configs/quickstart.yaml",
            *tiny_args(tiny_model_dir, out),
            "compare.num_local=2",
            *extra,
        ]
    )


def test_compare_trains_every_baseline_on_fedits_budget_and_reports(
    tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    assert _compare(tiny_model_dir, out) == 0
    err = capsys.readouterr().err
    compare = out / "compare"
    stored = json.loads((compare / "results.json").read_text())
    models = {m["name"]: m for m in stored["models"]}
    history = read_jsonl(out / "metrics.jsonl")
    answered = [int(c) for record in history[1:] for c in record["train_loss"]]
    local = [name for name in models if name.startswith("local-")]
    assert len(local) == 2 and list(models)[0] == "base" and "centralized" in models
    for name in local:  # train.local_steps=2 per round the client took part in
        assert models[name]["steps"] == 2 * answered.count(int(name.split("-")[1]))
    assert models["centralized"]["steps"] == models["fedit"]["steps"] == 2 * len(answered)
    for name in [*local, "centralized"]:  # progress names each baseline and its step budget
        assert f"training {name} ({models[name]['steps']} steps)" in err
    for name in models:
        heldout = stored["results"][name]["heldout"]
        assert heldout["num_examples"] == len(heldout["samples"]) > 0
        assert set(heldout) >= {"loss", "accuracy", "exact_match", "token_f1", "rouge_l"}
    # The FedIT row scores the run's own global adapter: its loss is the run's final loss.
    assert stored["results"]["fedit"]["heldout"]["loss"] == pytest.approx(
        history[-1]["eval"]["loss"], rel=1e-4
    )
    assert stored["results"]["base"]["heldout"]["loss"] == pytest.approx(
        history[0]["eval"]["loss"], rel=1e-4
    )
    report = (compare / "report.md").read_text()
    for name in models:
        assert f"| {name} |" in report
    assert "| model | arithmetic |" in report and "overall |" in report
    assert (compare / "heldout.png").stat().st_size > 1000
    for name in [*local, "centralized"]:
        assert (compare / "adapters" / name / "adapter_config.json").is_file()


def test_compare_reuses_a_complete_run(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    metrics = (out / "metrics.jsonl").read_text()
    assert _compare(tiny_model_dir, out, "compare.centralized=false") == 0
    assert (out / "metrics.jsonl").read_text() == metrics  # no round was trained again
    stored = json.loads((out / "compare" / "results.json").read_text())
    assert [m["name"] for m in stored["models"]][-1] == "fedit"
    # A second compare reuses the baselines it trained; a changed schedule retrains them.
    adapters = sorted((out / "compare" / "adapters").glob("*/adapter_model.safetensors"))
    written = {path: path.stat().st_mtime_ns for path in adapters}
    assert len(written) == 2
    assert _compare(tiny_model_dir, out, "compare.centralized=false") == 0
    assert {path: path.stat().st_mtime_ns for path in adapters} == written
    again = json.loads((out / "compare" / "results.json").read_text())
    first_local = stored["models"][1]["name"]
    assert (
        again["results"][first_local]["heldout"]["loss"]
        == (stored["results"][first_local]["heldout"]["loss"])
    )
    marker = adapters[0].parent / "baseline.json"
    recipe = json.loads(marker.read_text())
    recipe["stints"][0]["steps"] += 1
    marker.write_text(json.dumps(recipe))
    assert _compare(tiny_model_dir, out, "compare.centralized=false") == 0
    assert adapters[0].stat().st_mtime_ns != written[adapters[0]]
    assert adapters[1].stat().st_mtime_ns == written[adapters[1]]


def test_compare_refuses_a_different_run_and_bad_suites(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    assert _compare(tiny_model_dir, out, "train.lr=0.5") == 2
    assert "output_dir:" in capsys.readouterr().err
    assert _compare(tiny_model_dir, tmp_path / "new", "compare.suites=[mc:/nope.jsonl]") == 2
    err = capsys.readouterr().err
    assert "compare.suites nope: file not found: /nope.jsonl" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_eval_writes_suite_json_and_summary(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    code = main(["eval", "--adapter", str(out / "global_adapter"), "--suite", "heldout"])
    assert code == 0
    result = json.loads((out / "eval" / "heldout.json").read_text())
    history = read_jsonl(out / "metrics.jsonl")
    assert result["loss"] == pytest.approx(history[-1]["eval"]["loss"], rel=1e-4)
    assert result["accuracy"] == pytest.approx(history[-1]["eval"]["accuracy"])
    summary = (out / "eval" / "summary.md").read_text()
    assert "## heldout (heldout)" in summary and "ROUGE-L" in summary
    # The base model, without an adapter, into its own folder.
    base_out = tmp_path / "base"
    code = main(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--config",
            str(out / "config.yaml"),
            "--suite",
            "heldout",
            "--out",
            str(base_out),
        ]
    )
    assert code == 0
    base = json.loads((base_out / "eval" / "heldout.json").read_text())
    assert base["loss"] == pytest.approx(history[0]["eval"]["loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "mc:/missing.jsonl"], "--suite missing: file not found: /missing.jsonl"),
        (["--suite", "judge:QUESTIONS"], "eval.judge.base_url: judge suites need"),
        (["--suite", "bogus:x"], "unknown kind 'bogus'"),
        (["--suite", "heldout", "--suite", "heldout"], "two suites are named 'heldout'"),
        (["--suite", "heldout", "--adapter", "/no/such/adapter"], "--adapter: /no/such/adapter is"),
    ],
)
def test_eval_bad_input_one_line_exit_2(
    args, message, tiny_model_dir, tmp_path, capsys, shared_data
):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    capsys.readouterr()
    questions = str(shared_data / "vicuna_bench" / "question.jsonl")
    args = [a.replace("QUESTIONS", questions) for a in args]
    assert main(["eval", "--adapter", str(out / "global_adapter"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (out / "eval").exists()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("heldout", ("heldout", "heldout", None)),
        ("mc:data/mmlu.jsonl", ("mmlu", "mc", "data/mmlu.jsonl")),
        ("judge:x/vicuna_bench/question.jsonl", ("vicuna_bench", "judge", None)),
        ("mine=gsm8k:a/test.jsonl", ("mine", "gsm8k", "a/test.jsonl")),
        (
            "instructions:databricks/databricks-dolly-15k",
            ("databricks-dolly-15k", "instructions", None),
        ),
    ],
)
def test_parse_suite(spec, expected):
    parsed = parse_suite(spec)
    assert parsed.name == expected[0] and parsed.kind == expected[1]
    if expected[2] is not None:
        assert parsed.source == expected[2]


@pytest.mark.parametrize("spec", ["heldout:x", "mc", "x y=mc:f", "nope:f"])
def test_parse_suite_rejects(spec):
    with pytest.raises(ConfigError, match="--suite"):
        parse_suite(spec)


def test_eval_offline_suites_from_files(tiny_model_dir, tmp_path, repository_data, capsys):
    """mc, gsm8k and instructions suites side by side, from files in their documented formats."""
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    mc = tmp_path / "mmlu.jsonl"
    mc.write_text(
        json.dumps({"question": "2 + 2?", "choices": ["3", "4"], "answer": "B", "subject": "math"})
        + "\n"
        + json.dumps(
            {"instruction": "Sky colour?\nOptions: A. red, B. blue", "output": "The answer is: B"}
        )
        + "\n"
    )
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text(json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}) + "\n")
    shakespeare = repository_data / "shakespeare" / "test.json"
    code = main(
        [
            "eval",
            "--adapter",
            str(out / "global_adapter"),
            "--suite",
            f"mc:{mc}",
            "--suite",
            f"gsm8k:{gsm}",
            "--suite",
            f"lines=instructions:{shakespeare}",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 0
    mmlu = json.loads((out / "eval" / "mmlu.json").read_text())
    assert mmlu["num_questions"] == 2 and set(mmlu["accuracy_by_subject"]) == {"math", "mmlu"}
    for prediction in mmlu["predictions"]:  # the argmax of the log-likelihoods is the answer
        scores = prediction["log_likelihoods"]
        assert prediction["predicted"] == "AB"[scores.index(max(scores))]
    numeric = json.loads((out / "eval" / "gsm8k.json").read_text())
    assert numeric["num_examples"] == 1 and numeric["predictions"][0]["reference"] == "2"
    lines = json.loads((out / "eval" / "lines.json").read_text())
    assert lines["num_examples"] == len(json.loads(shakespeare.read_text()))
    assert lines["perplexity"] > 1 and 0 <= lines["rouge_l"] <= 1
    summary = (out / "eval" / "summary.md").read_text()
    for heading in ("## mmlu (mc)", "## gsm8k (gsm8k)", "## lines (instructions)"):
        assert heading in summary


class RecordingObserver(RunObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def on_eval_progress(self, label: str, done: int, total: int) -> None:
        self.events.append((label, done, total))


def test_eval_progress_counts_every_row_of_every_suite(tiny_model_dir, tmp_path):
    cfg = load_config("configs/quickstart.yaml", tiny_args(tiny_model_dir, tmp_path / "run"))
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "2 + 2?", "choices": ["3", "4", "5"], "answer": 1}))
    suites = load_suites(["heldout", f"mc:{mc}"], cfg)
    observer = RecordingObserver()
    evaluate_suites(load_for_eval(cfg, None), cfg, suites, observer=observer, label="base")
    for suite, expected_total in zip(suites, (2 * 18, 3), strict=True):
        events = [e for e in observer.events if e[0] == f"base {suite.spec.name}"]
        assert events[0][1] == 0 and events[-1][1] == events[-1][2] == expected_total
        assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)


def test_compare_scores_a_finished_flower_run_and_refuses_a_missing_one(
    tiny_model_dir, tmp_path, capsys
):
    flower = ["engine=flower", "flower.insecure=true"]
    assert _compare(tiny_model_dir, tmp_path / "none", *flower) == 2
    assert "engine=flower: fedit compare needs the finished Flower run" in capsys.readouterr().err
    # A finished run as the Flower engine leaves it (same files; the engines give the same
    # adapter, tests/engines/test_flower.py), made here in-process to keep the test fast.
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["engine"], saved["flower"]["insecure"] = "flower", True
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    metrics = (out / "metrics.jsonl").read_text()
    assert _compare(tiny_model_dir, out, *flower, "compare.centralized=false") == 0
    assert (out / "metrics.jsonl").read_text() == metrics
    stored = json.loads((out / "compare" / "results.json").read_text())
    history = read_jsonl(out / "metrics.jsonl")
    assert stored["results"]["fedit"]["heldout"]["loss"] == pytest.approx(
        history[-1]["eval"]["loss"], rel=1e-4
    )
