"""``fedit eval`` on CUDA (``-m gpu``): the heldout and multiple-choice suites score a run's
adapter on the GPU like they do on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedit.cli.main import main
from fedit.io import read_jsonl
from helpers import GPU, GPU_TEST_DEVICE, tiny_args

pytestmark = GPU

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
QUESTIONS = [
    {"question": "What is 12 + 35?", "choices": ["47", "46", "57"], "answer": 0, "subject": "math"},
    {"question": "What is 7 + 8?", "choices": ["14", "15"], "answer": 1, "subject": "math"},
    {
        "question": "Sort: 5, 3, 9",
        "choices": ["9, 5, 3", "3, 5, 9"],
        "answer": 1,
        "subject": "sort",
    },
    {"question": "Reverse: red blue", "choices": ["blue red", "red blue"], "answer": 0},
]


def _eval(adapter: Path, config: Path, out: Path, questions: Path) -> dict[str, dict]:
    suites = ["--suite", "heldout", "--suite", f"mc:{questions}"]
    args = ["--adapter", str(adapter), "--config", str(config), "--out", str(out), *suites]
    assert main(["eval", *args]) == 0
    return {
        name: json.loads((out / "eval" / f"{name}.json").read_text())
        for name in ("heldout", "quiz")
    }


def test_heldout_and_multiple_choice_on_the_gpu_match_the_cpu(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    extra = (f"model.device={GPU_TEST_DEVICE}", "train.lr=1e-2")
    assert main(["run", str(QUICKSTART), *tiny_args(tiny_model_dir, run, *extra)]) == 0
    questions = tmp_path / "quiz.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    on_cpu = yaml.safe_load((run / "config.yaml").read_text())
    on_cpu["model"]["device"] = "cpu"
    (tmp_path / "cpu.yaml").write_text(yaml.safe_dump(on_cpu))

    gpu = _eval(run / "global_adapter", run / "config.yaml", tmp_path / "gpu", questions)
    cpu = _eval(run / "global_adapter", tmp_path / "cpu.yaml", tmp_path / "cpu", questions)

    history = read_jsonl(run / "metrics.jsonl")
    assert gpu["heldout"]["loss"] == pytest.approx(history[-1]["eval"]["loss"], rel=1e-3)
    # The GPU evaluates in bf16 autocast (train.autocast=auto), the CPU here in fp32.
    assert gpu["heldout"]["loss"] == pytest.approx(cpu["heldout"]["loss"], rel=2e-2)
    assert gpu["heldout"]["num_examples"] == cpu["heldout"]["num_examples"] > 0
    assert gpu["quiz"]["num_questions"] == len(QUESTIONS)
    assert set(gpu["quiz"]["accuracy_by_subject"]) == {"math", "sort", "quiz"}
    for on_gpu, on_the_cpu in zip(
        gpu["quiz"]["predictions"], cpu["quiz"]["predictions"], strict=True
    ):
        assert on_gpu["log_likelihoods"] == pytest.approx(on_the_cpu["log_likelihoods"], rel=2e-2)
