"""A Flower site's own privacy floor: ``fedit flower supernode --min-noise-multiplier Z
--max-clip-norm C`` puts it in the SuperNode's node config, and a real SuperNode refuses an
instruction weaker than it, which the server logs naming the client and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from flwr.common.config import parse_config_args  # noqa: E402

from fedit.client.site_policy import SitePolicy  # noqa: E402
from helpers import tiny_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SITE = ["flower", "supernode", "--superlink", "127.0.0.1:1", "--insecure"]
PARTITION = ["--partition-id", "1", "--num-partitions", "2", "--no-site-worker"]


def _node_config(monkeypatch, *flags: str) -> dict:
    """The node config ``fedit flower supernode FLAGS`` gives its SuperNode, parsed by Flower's
    own ``--node-config`` parser (flower-supernode's)."""
    from fedit.cli import flower as flower_cli
    from fedit.cli.main import main

    commands: list[list[str]] = []
    monkeypatch.setattr(flower_cli, "_wait", lambda command: commands.append(command) or 0)
    assert main([*SITE, *PARTITION, *flags]) == 0
    (command,) = commands
    return parse_config_args([command[command.index("--node-config") + 1]])


def test_cli_supernode_floor_flags_set_the_node_config(monkeypatch):
    node = _node_config(monkeypatch, "--min-noise-multiplier", "2", "--max-clip-norm", "1")
    assert node["min-noise-multiplier"] == 2.0 and node["max-clip-norm"] == 1.0
    assert SitePolicy.from_node_config(node) == SitePolicy(2.0, 1.0)
    plain = _node_config(monkeypatch)
    assert "min-noise-multiplier" not in plain and "max-clip-norm" not in plain
    assert not SitePolicy.from_node_config(plain).has_floor


@pytest.mark.parametrize("flag", ["--min-noise-multiplier", "--max-clip-norm"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "two"])
def test_cli_supernode_refuses_a_floor_that_is_not_positive(monkeypatch, capsys, flag, value):
    from fedit.cli import flower as flower_cli
    from fedit.cli.main import main

    monkeypatch.setattr(flower_cli, "_wait", lambda command: pytest.fail("SuperNode started"))
    with pytest.raises(SystemExit) as raised:
        main([*SITE, *PARTITION, flag, value])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag}: must be a number > 0, got '{value}'" in err, err


@pytest.mark.slow  # real SuperLink and SuperNodes, two runs (~2 min on 2 cores)
def test_real_supernode_refuses_an_instruction_below_its_floor(tiny_model_dir, tmp_path):
    from flower_support import Federation

    dp = ("privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=1.0")
    fast = (
        "eval.generate=false",
        "data.synthetic.num_examples=80",
        "federation.num_clients=2",
        "federation.fraction_fit=1.0",
        "federation.rounds=1",
        "flower.connect_timeout=60",
        *dp,
    )
    reason = "client 1 refused the instruction: its noise multiplier z=1 is below 2"
    with Federation(tmp_path) as federation:
        for client in range(2):
            node = {"num-threads": 1, "partition-id": client, "num-partitions": 2}
            # Site 1 holds the server to z >= 2, as `--min-noise-multiplier 2` sets it; with
            # a site worker, as `fedit flower supernode` runs by default.
            floor = {"min-noise-multiplier": 2.0} if client == 1 else {}
            federation.add_node({**node, **floor}, worker=True)
        # min_fit_clients=1: the round goes on with client 0's reply alone.
        out = tmp_path / "run"
        result = federation.run(str(QUICKSTART), *tiny_args(tiny_model_dir, out, *fast))
        output = result.stdout + result.stderr
        assert result.returncode == 0, output + federation.logs()
        assert "client 1 failed: " in output and reason in output, output
        assert "going on without clients [1]" in output, output
        assert "client 0 failed" not in output and "client 0 refused" not in output
        # min_fit_clients=2: the run stops, naming the client that refused.
        stopped = tmp_path / "stopped"
        items = tiny_args(tiny_model_dir, stopped, *fast, "federation.min_fit_clients=2")
        result = federation.run(str(QUICKSTART), *items)
        failed = result.stdout + result.stderr
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["selected_clients"] == [0, 1] and list(record["client_metrics"]) == ["0"]
    assert (out / "global_adapter").is_dir()
    assert result.returncode == 1, failed
    assert reason in failed and "no usable reply from clients [1]" in failed, failed
    assert not (stopped / "global_adapter").exists()
