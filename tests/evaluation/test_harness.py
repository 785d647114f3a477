"""The ``lm_eval`` suite: lm-evaluation-harness on fedit's loaded model, offline on a local task,
checked question by question against fedit's own ``mc`` scorer on the same 20 questions."""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from fedit.cli.main import main
from fedit.config import ConfigError, load_config
from fedit.evaluation.harness import harness_result
from fedit.evaluation.harness_tasks import HarnessTasks
from fedit.evaluation.multiple_choice import LETTERS
from fedit.evaluation.runner import load_for_eval
from fedit.evaluation.suites import EvalContext, load_suites, parse_suite
from helpers import tiny_lora

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="needs the lmeval extra: pip install fedit[lmeval]",
)

TASK = "mc_sample_fedit"  # the shipped task that writes fedit's Alpaca prompt
NUM_QUESTIONS = 20


@pytest.fixture(scope="module")
def adapter(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A tiny adapter whose LoRA B is random, so that it changes the answers."""
    model, _, _ = tiny_lora(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    folder = tmp_path_factory.mktemp("harness") / "adapter"
    model.save_pretrained(folder)
    return folder


@needs_lm_eval
def test_lm_eval_result_has_accuracy_and_stderr(
    adapter, tiny_model_dir, repository_data, tmp_path, capsys
):
    out = tmp_path / "out"
    task_file = repository_data / "mc_sample" / f"{TASK}.yaml"
    args = ["--model", str(tiny_model_dir), "--config", "configs/quickstart.yaml"]
    args += ["--adapter", str(adapter), "--suite", f"lm_eval:{task_file}", "--out", str(out)]
    assert main(["eval", *args]) == 0
    result = json.loads((out / "eval" / f"lm_eval_{TASK}.json").read_text())
    assert result["kind"] == "lm_eval" and result["tasks"] == [TASK]
    assert result["num_questions"] == NUM_QUESTIONS
    assert result["metric_names"] == ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr"]
    predictions = result["predictions"][TASK]
    assert sorted(p["doc_id"] for p in predictions) == list(range(NUM_QUESTIONS))
    correct = sum(p["predicted"] == p["target"] for p in predictions)
    assert result["acc"] == pytest.approx(correct / NUM_QUESTIONS)
    assert result["acc_by_category"] == {TASK: result["acc"]}
    in_order = sorted(predictions, key=lambda p: p["doc_id"])
    assert result["per_example"]["acc"] == [p["scores"]["acc"] for p in in_order]
    # lm-eval's standard error of a mean of 0/1 scores: the sample standard deviation / sqrt(n).
    acc, norm = result["acc"], result["acc_norm"]
    assert result["acc_stderr"] == pytest.approx(math.sqrt(acc * (1 - acc) / (NUM_QUESTIONS - 1)))
    assert result["acc_norm_stderr"] == pytest.approx(
        math.sqrt(norm * (1 - norm) / (NUM_QUESTIONS - 1))
    )
    assert result["lm_eval"]["version"] == "0.4.13"
    # The terminal line and eval/summary.md show lm-eval's metrics and standard errors.
    line = f"lm_eval_{TASK}: acc {acc:.4f} ± {result['acc_stderr']:.4f}, acc_norm {norm:.4f}"
    assert line in capsys.readouterr().out
    summary = (out / "eval" / "summary.md").read_text()
    assert f"## lm_eval_{TASK} (lm_eval)" in summary and "**acc_norm_stderr**" in summary
    assert f"| model | {TASK} | overall |" in summary


@needs_lm_eval
def test_lm_eval_and_mc_choose_the_same_answer_for_every_question(
    adapter, tiny_model_dir, repository_data
):
    """Both scorers on the same 20 questions, the adapter on, in fp32 (under bf16 autocast the
    two differ by rounding, and a near-tie may break either way)."""
    cfg = load_config("configs/quickstart.yaml", [f"model.name={tiny_model_dir}"])
    sample = repository_data / "mc_sample"
    suites = load_suites(
        [f"mc:{sample / 'questions.jsonl'}", f"lm_eval:{sample / f'{TASK}.yaml'}"], cfg
    )
    loaded = load_for_eval(cfg, adapter)
    ctx = EvalContext(loaded.model, loaded.tokenizer, "alpaca", cfg, autocast="none")
    mc, lm = (suite.evaluate(ctx) for suite in suites)
    samples = sorted(lm["predictions"][TASK], key=lambda p: p["doc_id"])
    mc_choices = [LETTERS.index(p["predicted"]) for p in mc["predictions"]]
    lm_choices = [p["predicted"] for p in samples]
    assert len(set(mc_choices)) > 1  # not one letter everywhere, which would agree trivially
    assert lm_choices == mc_choices
    assert [p["target"] for p in samples] == [LETTERS.index(p["answer"]) for p in mc["predictions"]]
    assert abs(lm["acc"] - mc["accuracy"]) <= 1 / NUM_QUESTIONS
    # The log-likelihoods differ by one number per question: lm-eval moves the prompt's final
    # "\n" into the continuation and scores it too; it is the same for every option, so the
    # choice cannot change (acc_norm, which divides by the option's length, is lm-eval's own).
    for lm_sample, mc_prediction in zip(samples, mc["predictions"], strict=True):
        gaps = [
            lm_value - mc_value
            for lm_value, mc_value in zip(
                lm_sample["log_likelihoods"], mc_prediction["log_likelihoods"], strict=True
            )
        ]
        assert max(gaps) < 0  # the extra token costs probability
        assert max(gaps) - min(gaps) < 1e-2, gaps


@needs_lm_eval
def test_shipped_task_reads_its_data_from_any_directory(repository_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lm-eval alone would look for questions.jsonl here
    sample = repository_data / "mc_sample"
    (suite,) = load_suites([f"lm_eval:{sample / 'mc_sample.yaml'}"], load_config())
    assert suite.spec.name == "lm_eval_mc_sample"
    spec = suite.tasks.specs[0]
    assert spec["dataset_kwargs"]["data_files"] == {"test": str(sample / "questions.jsonl")}
    assert suite.size() == 4 * NUM_QUESTIONS  # built now: one row per option
    # A task YAML copied elsewhere, its data beside it, run from a third directory.
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    shutil.copy(sample / "questions.jsonl", tasks / "questions.jsonl")
    shutil.copy(sample / f"{TASK}.yaml", tasks / "copied.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (suite,) = load_suites(["lm_eval:../tasks/copied.yaml"], load_config())
    assert suite.spec.name == "lm_eval_copied" and suite.size() == 4 * NUM_QUESTIONS


@needs_lm_eval
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "lm_eval:/no/such/task.yaml",
            "--suite lm_eval_task: task file not found: /no/such/task.yaml",
        ),
        ("lm_eval:no_such_task_xyz", "unknown lm-eval task 'no_such_task_xyz'"),
        ("lm_eval:mc_sampel.yaml", "task file not found: mc_sampel.yaml"),
        ("lm_eval:a,,b", "an empty task name"),
        ("lm_eval:BROKEN", "dataset_kwargs.data_files.test: data file not found: missing.jsonl"),
    ],
)
def test_bad_lm_eval_suite_is_one_line(spec, message, tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "task: broken\ndataset_path: json\n"
        "dataset_kwargs:\n  data_files:\n    test: missing.jsonl\n"
        "output_type: multiple_choice\ndoc_to_text: q\ndoc_to_choice: ['a', 'b']\n"
        "doc_to_target: 0\n"
    )
    spec = spec.replace("BROKEN", str(broken))
    out = tmp_path / "out"
    args = ["--model", str(tiny_model_dir), "--config", "configs/quickstart.yaml"]
    assert main(["eval", *args, "--suite", spec, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval.tasks", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install fedit\[lmeval\]") as error:
        load_suites(["lm_eval:hellaswag"], load_config())
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("lm_eval:data/mc_sample/mc_sample.yaml", "lm_eval_mc_sample"),
        ("lm_eval:hellaswag", "lm_eval_hellaswag"),
        ("lm_eval:hellaswag, arc_easy", "lm_eval_hellaswag_arc_easy"),
        ("mine=lm_eval:mmlu", "mine"),
    ],
)
def test_lm_eval_suite_names(spec, name):
    parsed = parse_suite(spec)
    assert (parsed.name, parsed.kind) == (name, "lm_eval")


@needs_lm_eval
def test_several_tasks_pool_by_size_as_lm_eval_groups_do():
    """Values computed by hand: 10 questions at 0.5 and 30 at 0.2."""
    raw = {
        "results": {
            "small": {"alias": "small", "acc,none": 0.5, "acc_stderr,none": math.sqrt(0.25 / 9)},
            "large": {"alias": "large", "acc,none": 0.2, "acc_stderr,none": math.sqrt(0.16 / 29)},
        },
        "n-samples": {"small": {"effective": 10}, "large": {"effective": 30}},
        "samples": {},
    }
    result = harness_result(raw, HarnessTasks([], ["small", "large"], None, 0))
    assert result["acc"] == pytest.approx((5 + 6) / 40)
    # pooled variance: sum((n - 1) * se^2 * n) / (N - k) = (2.5 + 4.8) / 38, divided by N = 40
    assert result["acc_stderr"] == pytest.approx(math.sqrt(7.3 / 38 / 40))
    assert result["acc_by_category"] == {"small": 0.5, "large": 0.2}
    assert result["num_questions"] == 40
    # A stderr lm-eval could not compute ("N/A") is None; a filter other than none stays named.
    raw["results"]["small"].update({"acc_stderr,none": "N/A", "exact_match,strict-match": 1.0})
    raw["results"]["large"]["exact_match,strict-match"] = 0.0
    result = harness_result(raw, HarnessTasks([], ["small", "large"], None, 0))
    assert result["acc_stderr"] is None
    assert result["exact_match,strict-match"] == pytest.approx(10 / 40)
    # One requested group keeps lm-eval's own aggregate (a group may not weigh by size).
    raw["groups"] = {"both": {"alias": "both", "acc,none": 0.35, "acc_stderr,none": 0.07}}
    result = harness_result(raw, HarnessTasks([], ["both"], None, 0))
    assert (result["acc"], result["acc_stderr"]) == (0.35, 0.07)


def _imports_lm_eval(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        names = [node.module or ""]
    elif isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        return False
    return any(name.split(".")[0] == "lm_eval" for name in names)


def test_lm_eval_is_imported_only_by_the_harness_modules_and_lazily():
    src = Path(__file__).resolve().parents[2] / "src" / "fedit"
    trees = {
        path.relative_to(src).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for path in src.rglob("*.py")
    }
    anywhere = {name for name, tree in trees.items() if any(map(_imports_lm_eval, ast.walk(tree)))}
    harness = {f"evaluation/{name}.py" for name in ("harness", "harness_tasks", "harness_model")}
    assert anywhere == harness
    # At module level only harness_model.py, which harness.py imports inside a function.
    top_level = {name for name, tree in trees.items() if any(map(_imports_lm_eval, tree.body))}
    assert top_level == {"evaluation/harness_model.py"}
