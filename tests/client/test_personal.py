"""Personalization's closing round (``server.closing``, ``client.personal``): every client
makes and keeps its own model; finetune is exactly ``train_local`` from the global adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fedit.cli.main import main
from fedit.client.personal import finetune_train
from fedit.client.train import train_local
from fedit.config import load_config
from fedit.experiment import run_experiment
from fedit.model.lora import load_adapter_state
from fedit.server.loop import round_lr
from fedit.strategy.selection import client_seed
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CLIENTS = 3
ARGS = (
    "eval.generate=false",
    "data.synthetic.num_examples=60",
    f"federation.num_clients={CLIENTS}",
    "federation.rounds=2",
    "personalization.method=finetune",
    "personalization.local_steps=2",
)


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "run"
    cfg = load_config(QUICKSTART, tiny_args(tiny_model_dir, out, *ARGS))
    return cfg, run_experiment(cfg)


def test_finetune_is_train_local_from_the_global_adapter(finetuned):
    cfg, outcome = finetuned
    run = outcome.run_dir
    record = json.loads((run / "personalize.json").read_text())
    assert record["method"] == "finetune" and record["round"] == 3
    assert record["published"] == list(range(CLIENTS)) and record["not_published"] == []
    assert record["bytes_up"] > 0 and record["bytes_down"] > record["bytes_up"]
    final = load_adapter_state(run / "global_adapter")
    model = outcome.setup.server.model
    for client in range(CLIENTS):
        expected = train_local(
            model,
            outcome.setup.client_data[client],
            finetune_train(cfg),
            client_id=client,
            lr=round_lr(cfg, cfg.federation.rounds),
            seed=client_seed(cfg.seed, cfg.federation.rounds + 1, client),
            global_state=final,
        )
        assert expected.num_steps == 2
        published = load_adapter_state(run / "personal" / f"client-{client}")
        assert published.keys() == final.keys()
        assert all(torch.equal(published[k], expected.state[k]) for k in published), client
        assert any(not torch.equal(published[k], final[k]) for k in published)  # it trained
    report = (run / "report.md").read_text()
    assert "## Personalization" in report and f"{CLIENTS} of {CLIENTS} clients published" in report


def test_the_closing_reply_carries_nothing_per_client(finetuned):
    _, outcome = finetuned
    record = json.loads((outcome.run_dir / "personalize.json").read_text())
    # one small header per client: no adapter, no loss, no example count
    assert record["bytes_up"] < 2_000 * CLIENTS


def test_a_resume_after_the_last_round_redoes_only_the_close(finetuned, tmp_path):
    cfg, outcome = finetuned
    run = tmp_path / "run"
    shutil.copytree(outcome.run_dir, run)
    published = {c: load_adapter_state(run / "personal" / f"client-{c}") for c in range(CLIENTS)}
    metrics = (run / "metrics.jsonl").read_text()
    (run / "personalize.json").unlink()  # as if the process died in the closing round
    shutil.rmtree(run / "personal")
    args = [*tiny_args(Path(cfg.model.name), run, *ARGS), "resume=true"]
    resumed = run_experiment(load_config(QUICKSTART, args))
    assert (run / "metrics.jsonl").read_text() == metrics  # no round trained again
    assert json.loads((run / "personalize.json").read_text())["published"] == list(range(CLIENTS))
    for client, before in published.items():
        again = load_adapter_state(run / "personal" / f"client-{client}")
        assert all(torch.equal(again[k], before[k]) for k in before)
    assert resumed.run_dir == run


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("privacy.level=example",), "privacy.level=example: not with personalization"),
        (("personalization.method=fedavg",), "personalization.method"),
        (("personalization.local_steps=-1",), "personalization.local_steps: must be >= 0"),
    ],
    ids=["example-level DP", "unknown method", "negative steps"],
)
def test_refusals_exit_2_with_one_line(extra, expected, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *tiny_args(tiny_model_dir, out, *ARGS, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
