"""``fedit export``: the merged model loads with plain transformers and answers exactly like
base plus adapter; the adapter export loads through transformers' peft integration."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from serving_support import Reference, make_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedit.cli.main import main
from fedit.client.evaluate import generate_token_ids
from fedit.config import ConfigError
from fedit.serving.export import export_model

PROMPTS = [
    "What is 12 + 35?",
    "Sort these numbers: 5, 3, 9",
    "Reverse the words: red green blue",
    "Convert 3 km to meters",
]


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("export-run"), "alpaca", seed=3)


def _greedy_ids(model, tokenizer, reference):
    prompts = [reference.prompt([{"role": "user", "content": p}]) for p in PROMPTS]
    return generate_token_ids(model, tokenizer, prompts, max_new_tokens=16, batch_size=1)


def test_merged_export_matches_base_plus_adapter(tiny_model_dir, adapter, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main(["export", "--adapter", str(adapter), "--out", str(out), "--merge"]) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    info = json.loads((out / "fedit_export.json").read_text())
    assert info["merged"] is True and info["template"] == "alpaca"
    assert info["base_model"] == str(tiny_model_dir)

    reference = Reference(tiny_model_dir, adapter, "alpaca")
    expected = _greedy_ids(reference.model, reference.tokenizer, reference)
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"  # plain transformers, no peft wrapper
    assert _greedy_ids(merged, AutoTokenizer.from_pretrained(out), reference) == expected

    base = Reference(tiny_model_dir, None, "alpaca")
    assert _greedy_ids(base.model, base.tokenizer, reference) != expected  # the adapter matters
    assert not list(tmp_path.glob(".merged.*"))  # no temporary folder left behind


def test_adapter_export_loads_base_plus_adapter(tiny_model_dir, adapter, tmp_path):
    out = export_model(adapter, tmp_path / "adapter-only")
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)

    reference = Reference(tiny_model_dir, adapter, "alpaca")
    expected = _greedy_ids(reference.model, reference.tokenizer, reference)
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()  # transformers' peft integration
    assert _greedy_ids(loaded, AutoTokenizer.from_pretrained(out), reference) == expected


def test_export_refuses_to_clobber(adapter, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", "--adapter", str(adapter), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedit: error: --out:") and "--overwrite" in err
    assert len(err.splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="inside it"):
        export_model(adapter, adapter / "sub")


def test_export_bad_adapter_and_failed_export_leave_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["export", "--adapter", str(tmp_path), "--out", str(out), "--merge"]) == 2
    assert "is not a PEFT adapter" in capsys.readouterr().err
    adapter = tmp_path / "orphan"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, adapter / "adapter_model.safetensors")  # whole, loads later
    code = main(["export", "--adapter", str(adapter), "--out", str(out), "--model", "/no/model"])
    assert code == 2
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("damage", ["no weights", "truncated weights"])
@pytest.mark.parametrize("merge", [False, True], ids=["adapter", "merged"])
def test_export_of_an_adapter_without_whole_weights_is_refused(
    adapter, tmp_path, capsys, damage, merge
):
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    weights = broken / "adapter_model.safetensors"
    if damage == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-100])
    (tmp_path / "config.yaml").write_text((adapter.parent / "config.yaml").read_text())
    out = tmp_path / "out"
    args = ["export", "--adapter", str(broken), "--out", str(out)] + ["--merge"] * merge
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedit: error: --adapter:")
    assert "adapter_model.safetensors" in err
    assert not out.exists() and not list(tmp_path.glob(".out.*"))
