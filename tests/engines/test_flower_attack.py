"""A Flower site made malicious by its node config attacks exactly as the in-process client does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedit.config import ConfigError, load_config
from fedit.data.prepare import prepare_data
from fedit.engines.flower_site import is_malicious, train_site
from fedit.engines.simulation import SimulationTransport
from fedit.experiment import load_setup
from fedit.strategy import build_strategy
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
FAST = ("eval.generate=false", "data.synthetic.num_examples=80", "federation.num_clients=2")


@pytest.mark.parametrize("kind", ["sign_flip", "backdoor"])
def test_malicious_site_matches_the_in_process_attacker(tiny_model_dir, tmp_path, kind):
    attack = (f"attack.kind={kind}", "attack.magnitude=3")
    cfg = load_config(
        QUICKSTART, tiny_args(tiny_model_dir, tmp_path, *FAST, *attack, "attack.clients=[1]")
    )
    setup = load_setup(cfg, prepare_data(cfg))
    global_state = setup.server.initial_state()
    _, instructions = build_strategy(cfg).configure_fit(1, global_state, [10, 10], cfg.train.lr)
    instruction = next(i for i in instructions if i.client_id == 1)
    transport = SimulationTransport(cfg, setup.server.model, setup.client_data)
    local = transport._fit_one(instruction)

    site_cfg = load_config(
        QUICKSTART,
        tiny_args(
            tiny_model_dir, tmp_path, *FAST, *attack, "engine=flower", "flower.insecure=true"
        ),
    )
    node = {"partition-id": 1, "num-partitions": 2, "malicious": "true"}
    remote = train_site(site_cfg, node, instruction)
    assert remote.metrics["attack"] == local.metrics["attack"] == kind
    assert max((local.state[k] - remote.state[k]).abs().max().item() for k in local.state) <= 1e-5
    honest = train_site(site_cfg, {**node, "malicious": "false"}, instruction)
    assert "attack" not in honest.metrics
    assert any(not torch.equal(honest.state[k], remote.state[k]) for k in honest.state)


def test_malicious_must_be_a_boolean():
    assert is_malicious({}) is False and is_malicious({"malicious": True}) is True
    with pytest.raises(ConfigError, match="node config malicious: expected true or false"):
        is_malicious({"malicious": "yes"})


@pytest.mark.slow  # real SuperLink and SuperNodes; the site's code path is tested above
def test_real_supernode_with_malicious_true_is_marked_and_rejected(tiny_model_dir, tmp_path):
    pytest.importorskip("flwr")
    from flower_support import Federation

    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        for client in range(5):
            node = {"num-threads": 1, "partition-id": client, "num-partitions": 5}
            federation.add_node({**node, "malicious": "true"} if client == 3 else node)
        items = tiny_args(
            tiny_model_dir,
            out,
            *FAST[:2],
            "federation.num_clients=5",
            "federation.rounds=1",
            "federation.fraction_fit=1.0",
            "flower.connect_timeout=120",
            "attack.kind=sign_flip",
            "attack.magnitude=5",
            "robust.method=krum",
        )
        result = federation.run(str(QUICKSTART), *items)
        assert result.returncode == 0, result.stdout + result.stderr + federation.logs()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["aggregation"]["attackers"] == [3]
    assert 3 in record["aggregation"]["robust"]["rejected"]


def test_cli_supernode_malicious_flag_sets_the_node_config(monkeypatch):
    pytest.importorskip("flwr")
    from fedit.cli import flower as flower_cli
    from fedit.cli.main import main

    commands = []
    monkeypatch.setattr(flower_cli, "_wait", lambda command: commands.append(command) or 0)
    base = ["flower", "supernode", "--superlink", "127.0.0.1:1", "--insecure"]
    site = ["--partition-id", "3", "--num-partitions", "5", "--no-site-worker"]
    assert main([*base, *site, "--malicious"]) == 0
    assert main([*base, *site]) == 0
    malicious, honest = (" ".join(command) for command in commands)
    assert "malicious=true" in malicious and "malicious" not in honest
