"""The ``fedit`` CLI end to end on the tiny Llama, and every bad-input case of the core issue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from fedit.cli.main import main
from fedit.config import load_config
from fedit.config.builtin import quickstart_path
from fedit.experiment import run_experiment
from helpers import CrashInRound, tiny_args

ROOT = Path(__file__).resolve().parents[2]


def _adapter_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "adapter_model.safetensors"))


def test_run_writes_complete_run_dir(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "configs/quickstart.yaml", *tiny_args(tiny_model_dir, out)]) == 0
    for name in (
        "config.yaml",
        "partition.json",
        "metrics.jsonl",
        "report.md",
        "loss.png",
        "accuracy.png",
        "accuracy_by_category.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "round_002" / "round.json").is_file()

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert "accuracy_by_category" in records[0]["eval"]  # base model scored before round 1
    for record in records[1:]:
        assert len(record["selected_clients"]) == 2
        assert set(record["train_loss"]) == {str(c) for c in record["selected_clients"]}
        assert "loss" in record["eval"]
        # The quickstart generates (accuracy) for the base model and the final adapter only.
        assert ("accuracy" in record["eval"]) == (record is records[-1])
        assert {"fit", "aggregate", "eval"} <= set(record["seconds"])

    partition = json.loads((out / "partition.json").read_text())
    assert len(partition["clients"]) == 4
    assert sum(c["num_examples"] for c in partition["clients"]) == partition["num_train"]

    printed = capsys.readouterr().out
    assert "Held-out results" in printed and "report:" in printed
    down = sum(r["communication"]["bytes_down"] for r in records[1:]) / 1e6
    assert f"communication: {down:.2f} MB sent to clients" in printed

    # The global adapter is a real PEFT adapter: it loads and changes the model's output.
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(ids).logits
        peft_model = PeftModel.from_pretrained(base, str(out / "global_adapter"))
        after = peft_model(ids).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(
        _adapter_tensors(out / "global_adapter"),
        _adapter_tensors(out / "checkpoints" / "round_002"),
    )
    report = (out / "report.md").read_text()
    assert "base model" in report and "FedIT (round 2)" in report


def test_resume_gives_same_adapter_as_uninterrupted(tiny_model_dir, tmp_path):
    qs = ROOT / "configs" / "quickstart.yaml"
    full = load_config(qs, tiny_args(tiny_model_dir, tmp_path / "full", "federation.rounds=3"))
    run_experiment(full)

    args = tiny_args(tiny_model_dir, tmp_path / "crashed", "federation.rounds=3")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(qs, args), CrashInRound(3))
    assert not (tmp_path / "crashed" / "global_adapter").exists()
    assert main(["run", str(qs), *args, "resume=true"]) == 0

    torch.testing.assert_close(
        _adapter_tensors(tmp_path / "full" / "global_adapter"),
        _adapter_tensors(tmp_path / "crashed" / "global_adapter"),
        rtol=0,
        atol=0,
    )
    rounds = [json.loads(x)["round"] for x in (tmp_path / "crashed" / "metrics.jsonl").open()]
    assert rounds == [0, 1, 2, 3]


def test_rerun_refuses_existing_run_unless_overwrite(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "federation.rounds=1", "eval.base=false")
    assert main(["run", *args]) == 0
    capsys.readouterr()
    assert main(["run", *args]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["run", *args, "overwrite=true"]) == 0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = {
    "missing file": (["data.source=/no/such/data.jsonl"], "/no/such/data.jsonl"),
    "unknown key": (["train.learning_rate=1"], "train.learning_rate: unknown key"),
    "missing column": (["data.source={qa}"], "columns found: question, answer"),
    "more clients than examples": (
        ["data.synthetic.num_examples=30", "federation.num_clients=50", "data.test_per_category=0"],
        "federation.num_clients",
    ),
    "alpha zero": (
        ["data.partition.method=dirichlet", "data.partition.alpha=0"],
        "data.partition.alpha",
    ),
    "unknown model": (["model.name=no-such-model-xyz"], "no-such-model-xyz"),
    "malformed json line": (["data.source={broken}"], "broken.jsonl:2"),
    "resume of a non-run": (["resume=true", "output_dir={notrun}"], "is not a fedit run"),
    "defence that cannot feed the strategy": (
        ["strategy.name=scaffold", "robust.method=geometric_median"],
        "robust.method=geometric_median cannot feed strategy.name=scaffold",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_one_line_exit_2_nothing_written(case, tiny_model_dir, tmp_path, capsys):
    files = {
        "qa": _write(tmp_path / "qa.jsonl", '{"question": "q", "answer": "a"}\n'),
        "broken": _write(tmp_path / "broken.jsonl", '{"instruction": "a", "output": "b"}\n{oops\n'),
        "notrun": tmp_path / "notrun",
    }
    (tmp_path / "notrun").mkdir()
    overrides, expected = BAD_INPUTS[case]
    overrides = [o.format(**files) for o in overrides]
    out = tmp_path / "out"
    args = [*tiny_args(tiny_model_dir, out), *overrides]
    if case == "resume of a non-run":
        args = [a for a in args if not a.startswith("output_dir=")] + [f"output_dir={out}"]
        args[-1] = f"output_dir={files['notrun']}"
    code = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists()
    assert list((tmp_path / "notrun").iterdir()) == []


def test_script_exit_code_and_no_traceback(tmp_path):
    fedit = Path(sys.executable).with_name("fedit")
    result = subprocess.run(
        [str(fedit), "validate", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"fedit: error: {tmp_path / 'missing.yaml'}: config file not found"
    )


def test_validate_and_partition_commands(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the configs name their data relative to the repository root
    assert main(["validate", "configs/shepherd_dolly.yaml"]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["partition", "configs/shakespeare.yaml"]) == 0  # its data ships in data/
    printed = capsys.readouterr().out
    assert "THE_WINTER_S_TALE_THIRD_GENTLEMAN" in printed and "total" in printed


def test_validate_reads_local_data_and_names_what_is_wrong(tmp_path, capsys, monkeypatch):
    """validate loads and partitions local data, so a bad file fails before a long run does;
    a hub dataset is left to the run (validate downloads nothing)."""
    monkeypatch.chdir(ROOT)
    assert main(["validate", "configs/shakespeare.yaml"]) == 0
    assert "training examples over" in capsys.readouterr().out
    assert main(["validate", "configs/shepherd_dolly.yaml"]) == 0
    assert "not read (validate does not download)" in capsys.readouterr().out
    missing = tmp_path / "missing.jsonl"
    assert main(["validate", "configs/quickstart.yaml", f"data.source={missing}"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"fedit: error: data.source: file not found: {missing}"
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "hi", "answer": "there"}\n')
    assert main(["validate", "configs/quickstart.yaml", f"data.source={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedit: error:") and "instruction" in err and "\n" not in err, err


def test_quickstart_names_the_built_in_config_unless_a_file_has_that_name(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as for an installed wheel
    assert main(["validate", "quickstart"]) == 0
    packaged = quickstart_path()  # the package's own copy, wherever fedit is installed
    assert packaged.parts[-3:] == ("fedit", "configs", "quickstart.yaml")
    assert capsys.readouterr().out.startswith(f"{packaged}: valid")

    assert main(["run", "configs/quickstart.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("write quickstart instead (fedit run quickstart)"), err

    (tmp_path / "quickstart").write_text("federation:\n  num_clients: 3\n")
    assert main(["validate", "quickstart"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("quickstart: valid") and "3 clients" in printed


def test_generate_command(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", *tiny_args(tiny_model_dir, out, "federation.rounds=1", "eval.base=false")])
        == 0
    )
    capsys.readouterr()
    code = main(
        [
            "generate",
            "--adapter",
            str(out / "global_adapter"),
            "--max-new-tokens",
            "5",
            "What is 2 + 3?",
        ]
    )
    assert code == 0  # the base model was found through the run's config.yaml
    capsys.readouterr()
    assert main(["generate", "--adapter", str(tmp_path), "hi"]) == 2
    assert "is not a PEFT adapter" in capsys.readouterr().err


def test_shakespeare_config_runs_with_natural_partition(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's data/shakespeare paths, as the README runs it
    out = tmp_path / "shakespeare"
    code = main(
        [
            "run",
            "configs/shakespeare.yaml",
            f"model.name={tiny_model_dir}",
            f"output_dir={out}",
            "data.max_examples=40",
            "federation.rounds=1",
            "train.local_steps=1",
            "train.batch_size=4",
            "train.micro_batch_size=4",
            "eval.max_new_tokens=2",
        ]
    )
    assert code == 0
    partition = json.loads((out / "partition.json").read_text())
    assert len(partition["clients"]) == 2  # one client per speaking role
    assert partition["num_test"] == 260  # the separate test file, not a hold-out
    for client in partition["clients"]:
        assert sum(1 for n in client["counts"].values() if n) == 1
