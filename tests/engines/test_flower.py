"""The Flower engine: records, reply checks, and real SuperLink + SuperNodes on 127.0.0.1.

The process tests start a SuperLink and two SuperNodes (own FLWR_HOME, free ports) and run
the tiny experiment through ``fedit flower run``; every process is killed on teardown.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from flower_support import Federation  # noqa: E402
from flwr.app import Array, ArrayRecord, Error, Message, RecordDict  # noqa: E402

from fedit.config import ConfigError, load_config  # noqa: E402
from fedit.engines import flower  # noqa: E402
from fedit.engines.flower_launch import write_app, write_certificates  # noqa: E402
from fedit.engines.messages import (  # noqa: E402
    MalformedReplyError,
    pack_instruction,
    pack_update,
    unpack_instruction,
    unpack_update,
)
from fedit.experiment import run_experiment  # noqa: E402
from fedit.server.loop import RoundFailedError, enough_replies  # noqa: E402
from fedit.strategy.selection import Selection  # noqa: E402
from fedit.types import ClientUpdate, FitConfig, FitInstruction  # noqa: E402
from helpers import tiny_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
DPO = ROOT / "configs" / "dpo.yaml"
# Two clients, both selected each round: the smallest federation that still averages.
FAST = (
    "eval.generate=false",
    "data.synthetic.num_examples=80",
    "federation.num_clients=2",
    "federation.fraction_fit=1.0",
    "flower.connect_timeout=60",
)
ONE_THREAD = {"num-threads": 1}  # two SuperNodes training at once on a small machine


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "layer.lora_A.weight": torch.randn(4, 8, generator=generator),
        "layer.lora_B.weight": torch.randn(8, 4, generator=generator),
    }


def _instruction(compression: str = "none", client_id: int = 1) -> FitInstruction:
    config = FitConfig(lr=1e-3, rank=4, seed=0, compression=compression)
    return FitInstruction(client_id, _state(0), config, {"server_control": _state(2)})


def _update(client_id: int = 1) -> ClientUpdate:
    return ClientUpdate(client_id, _state(1), 12, 0.5, 2, {"tokens": 99})


def _reply(update: ClientUpdate, instruction: FitInstruction) -> RecordDict:
    return flower.to_content(pack_update(update, instruction))


# --- records: no processes --------------------------------------------------------------------


def test_instruction_travels_as_the_in_process_bytes():
    instruction = _instruction()
    message = pack_instruction(instruction)
    assert flower.from_content(flower.to_content(message)) == message
    received = unpack_instruction(flower.from_content(flower.to_content(message)))
    assert received.client_id == 1 and received.config == instruction.config
    for name, tensor in instruction.state.items():
        assert torch.equal(received.state[name], tensor)
    assert torch.equal(
        received.extras["server_control"]["layer.lora_A.weight"],
        instruction.extras["server_control"]["layer.lora_A.weight"],
    )


@pytest.mark.parametrize("compression", ["none", "fp16", "bf16", "int8", "int8_channel"])
def test_update_records_decode_like_the_in_process_bytes(compression):
    instruction = _instruction(compression)
    via_flower = flower.update_from_content(_reply(_update(), instruction), instruction)
    upload = pack_update(_update(), instruction)
    via_bytes = unpack_update(upload, instruction)
    for name in instruction.state:
        assert torch.equal(via_flower.state[name], via_bytes.state[name])
    assert via_flower.num_examples == 12 and via_flower.metrics["tokens"] == 99
    assert via_flower.metrics["bytes_up"] == len(upload)  # counted as in-process


def test_lossy_uploads_are_smaller_on_the_wire():
    big = {"layer.lora_A.weight": torch.randn(64, 256), "layer.lora_B.weight": torch.randn(256, 64)}
    sizes = {}
    for compression in ("none", "int8"):
        instruction = FitInstruction(
            1, big, FitConfig(lr=1e-3, rank=64, seed=0, compression=compression)
        )
        update = ClientUpdate(1, {k: v + 1e-3 for k, v in big.items()}, 12, 0.5, 2)
        sizes[compression] = len(flower.from_content(_reply(update, instruction)))
    assert sizes["int8"] < 0.5 * sizes["none"]


def _malformed(kind: str) -> RecordDict:
    update = _update()
    if kind == "nan":
        update.state["layer.lora_B.weight"][0, 0] = math.nan
    if kind == "shape":
        update.state["layer.lora_B.weight"] = torch.zeros(8, 3)
    if kind == "client":
        update.client_id = 0
    content = _reply(update, _instruction())
    if kind == "missing":
        del content.array_records[flower.MESSAGE_KEY]
    if kind == "header":
        message = flower.from_content(content)
        content = flower.to_content(message.replace(b'"num_steps"', b'"num_stepz"', 1))
    if kind == "corrupt":
        content = flower.to_content(b"abc")
    if kind == "stype":
        content.array_records[flower.MESSAGE_KEY] = ArrayRecord(
            {flower.BYTES_KEY: Array("uint8", (3,), "fedit.safetensors", b"abc")}
        )
    return content


def test_each_message_travels_as_one_array():
    content = flower.to_content(pack_instruction(_instruction()))
    assert set(content.array_records) == {flower.MESSAGE_KEY}
    assert len(content.array_records[flower.MESSAGE_KEY]) == 1


@pytest.mark.parametrize(
    "kind", ["nan", "shape", "client", "missing", "header", "corrupt", "stype"]
)
def test_malformed_replies_are_rejected_naming_the_client(kind):
    with pytest.raises(MalformedReplyError, match="client 1: malformed reply"):
        flower.update_from_content(_malformed(kind), _instruction())


class FakeGrid:
    """Answers messages with canned replies at the first pull; node id = client id + 100."""

    def __init__(self, contents: dict[int, RecordDict | None]):
        self.contents = contents
        self.pushed: dict[str, Message] = {}
        self.count = self.pulls = 0

    def get_node_ids(self):
        return [client + 100 for client in self.contents]

    def push_messages(self, messages):
        ids = []
        for message in messages:
            message_id = f"m{self.count}"
            self.count += 1
            message.metadata.__dict__["_message_id"] = message_id
            self.pushed[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        replies = []
        for message_id in message_ids:
            message = self.pushed[message_id]
            client = message.metadata.dst_node_id - 100
            if message.metadata.message_type == "query":
                content = flower.site_content(client, 10 + client)
            elif self.contents[client] is None:
                continue  # this node never answers
            else:
                content = self.contents[client]
            replies.append(Message(content=content, reply_to=message))
        return replies


def _transport(tmp_path, grid: FakeGrid, min_fit_clients: int):
    cfg = load_config(
        QUICKSTART,
        tiny_args(
            Path("unused"),
            tmp_path,
            *FAST,
            "engine=flower",
            "flower.insecure=true",
            "flower.reply_timeout=0.5",
            f"federation.min_fit_clients={min_fit_clients}",
        ),
    )
    return cfg, flower.FlowerTransport(cfg, grid)  # type: ignore[arg-type]


def _instructions():
    return [_instruction(client_id=c) for c in (0, 1)]


def _good(client_id: int) -> RecordDict:
    return _reply(_update(client_id), _instructions()[client_id])


def test_transport_maps_nodes_to_clients(tmp_path, run_identity):
    grid = FakeGrid({0: _good(0), 1: _good(1)})
    _, transport = _transport(tmp_path, grid, 2)
    assert transport.client_sizes == [10, 11]
    pulls = grid.pulls
    updates = transport.fit(_instructions(), 1)
    assert [u.client_id for u in updates] == [0, 1]
    for update, instruction in zip(updates, _instructions(), strict=True):
        # Bytes are counted as in-process: the engines.messages sizes, both ways.
        assert update.metrics["bytes_down"] == len(pack_instruction(instruction))
        assert update.metrics["bytes_up"] == len(flower.from_content(_good(update.client_id)))
    assert grid.pulls == pulls + 1  # every reply was there: no waiting


def test_exchange_polls_often_and_stops_at_the_timeout(run_identity):
    from flwr.app import MessageType

    grid = FakeGrid({0: None})  # never answers
    message = Message(content=RecordDict(), message_type=MessageType.TRAIN, dst_node_id=100)
    started = time.monotonic()
    assert flower.exchange(grid, [message], timeout=0.6) == []
    assert 0.6 <= time.monotonic() - started < 1.5
    assert grid.pulls >= 3  # every POLL_SECONDS, not Flower's 3 s


def test_transport_drops_a_malformed_reply_and_goes_on(tmp_path, run_identity, caplog):
    _, transport = _transport(tmp_path, FakeGrid({0: _good(0), 1: _malformed("nan")}), 1)
    updates = transport.fit(_instructions(), 1)
    assert [u.client_id for u in updates] == [0]
    assert "client 1: malformed reply rejected" in caplog.text


def _round_of(cfg, transport) -> bool:
    """One round's replies judged by the round loop's rule."""
    instructions = _instructions()
    updates = transport.fit(instructions, 1)
    return enough_replies(cfg, 1, Selection([0, 1]), instructions, [u.client_id for u in updates])


def test_run_fails_naming_missing_clients_below_min_fit(tmp_path, run_identity):
    cfg, transport = _transport(tmp_path, FakeGrid({0: _good(0), 1: None}), 2)
    with pytest.raises(RoundFailedError, match=r"no usable reply from clients \[1\]"):
        _round_of(cfg, transport)


def test_error_reply_counts_as_missing(tmp_path, run_identity):
    good = _good(0)
    grid = FakeGrid({0: good, 1: good})
    original = grid.pull_messages

    def with_error(message_ids):
        asked = [grid.pushed[message_id] for message_id in message_ids]
        replies = list(original(message_ids))
        if asked[1].metadata.message_type == "train":
            replies[1] = Message(error=Error(code=1, reason="boom"), reply_to=asked[1])
        return replies

    grid.pull_messages = with_error  # type: ignore[method-assign]
    cfg, transport = _transport(tmp_path, grid, 2)
    with pytest.raises(RoundFailedError, match=r"clients \[1\]"):
        _round_of(cfg, transport)


def test_missing_supernode_fails_after_connect_timeout(tmp_path, run_identity):
    class NoNodes(FakeGrid):
        def get_node_ids(self):
            return [100]

    cfg_args = ("flower.connect_timeout=1",)
    with pytest.raises(flower.FlowerRunError, match=r"clients \[1\] have no SuperNode"):
        cfg = load_config(
            QUICKSTART,
            tiny_args(
                Path("x"), tmp_path, *FAST, "engine=flower", "flower.insecure=true", *cfg_args
            ),
        )
        flower.connect_clients(NoNodes({0: None, 1: None}), cfg)  # type: ignore[arg-type]


def test_config_round_trips_through_run_config_and_app(tmp_path):
    cfg = load_config(QUICKSTART, ["engine=flower", "flower.insecure=true", "seed=7"])
    assert flower.from_run_config(flower.to_run_config(cfg)) == cfg
    from flwr.common.config import get_fab_config, validate_config

    app = write_app(cfg, tmp_path / "app")
    import tomli

    config = tomli.loads((app / "pyproject.toml").read_text())
    assert validate_config(config, check_module=True, project_dir=app)[0]
    assert flower.from_run_config(config["tool"]["flwr"]["app"]["config"]) == cfg
    assert get_fab_config  # the same parser flwr run uses


def test_flower_engine_needs_tls_or_explicit_insecure():
    with pytest.raises(ConfigError, match="flower.root_certificates"):
        load_config(QUICKSTART, ["engine=flower"])
    with pytest.raises(ConfigError, match="fedit flower run"):
        run_experiment(load_config(QUICKSTART, ["engine=flower", "flower.insecure=true"]))


def test_cli_refuses_a_run_without_tls_or_insecure(capsys):
    from fedit.cli.main import main

    assert main(["flower", "run", str(QUICKSTART)]) == 2
    assert "flower.root_certificates" in capsys.readouterr().err


def test_cli_supernode_needs_its_data_and_security(capsys, tmp_path):
    from fedit.cli.main import main

    with pytest.raises(SystemExit):  # neither --root-certificates nor --insecure
        main(["flower", "supernode", "--superlink", "127.0.0.1:1", "--partition-id", "0"])
    args = ["flower", "supernode", "--superlink", "127.0.0.1:1", "--insecure"]
    assert main(args) == 2
    assert "--data-path" in capsys.readouterr().err
    assert main([*args, "--data-path", str(tmp_path / "a.jsonl")]) == 2
    assert "--client-id" in capsys.readouterr().err


def test_cli_supernode_starts_a_site_worker_and_stops_it(monkeypatch, tmp_path):
    from fedit.cli import flower as flower_cli
    from fedit.cli.main import main
    from fedit.engines import site_worker

    events: list[str] = []
    monkeypatch.setattr(flower_cli, "_wait", lambda command: events.append(" ".join(command)) or 0)
    monkeypatch.setattr(site_worker, "start_worker", lambda env: ("worker", tmp_path / "w"))
    monkeypatch.setattr(site_worker, "stop_worker", lambda *stopped: events.append("stopped"))
    site = ["flower", "supernode", "--superlink", "127.0.0.1:1", "--insecure", "--client-id", "0"]
    assert main([*site, "--data-path", str(tmp_path / "a.jsonl")]) == 0
    assert f"site-worker='{tmp_path / 'w'}'" in events[0] and events[1:] == ["stopped"]
    assert main([*site, "--data-path", str(tmp_path / "a.jsonl"), "--no-site-worker"]) == 0
    assert "site-worker" not in events[2] and len(events) == 3
    state = ["--state-dir", str(tmp_path / "kept"), "--no-site-worker"]
    assert main([*site, "--data-path", str(tmp_path / "a.jsonl"), *state]) == 0
    assert f"state-dir='{tmp_path / 'kept'}'" in events[3]  # the site's own folder


def test_certificates_are_signed_by_the_ca(tmp_path):
    import subprocess

    folder = write_certificates(tmp_path, ["127.0.0.1", "localhost"], bits=2048)
    verify = ["openssl", "verify", "-CAfile", folder / "ca.crt", folder / "server.pem"]
    assert subprocess.run(verify, capture_output=True).returncode == 0
    text = subprocess.run(
        ["openssl", "x509", "-in", folder / "server.pem", "-noout", "-text"],
        capture_output=True,
        text=True,
    ).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text


def test_site_reads_its_own_data_file(tiny_model_dir, tmp_path):
    from fedit.engines.flower_site import site_examples

    rows = [{"instruction": f"Say {i}", "output": str(i)} for i in range(5)]
    path = tmp_path / "site.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "x", *FAST))
    client_id, examples = site_examples(cfg, {"data-path": str(path), "client-id": 1})
    assert client_id == 1 and sorted(e["output"] for e in examples) == [str(i) for i in range(5)]
    with pytest.raises(ConfigError, match="num-partitions=3"):
        site_examples(cfg, {"partition-id": 0, "num-partitions": 3})


def test_site_query_counts_like_training_without_the_model(tiny_model_dir, tmp_path):
    from fedit.engines.flower_site import count_site_examples, load_site

    cfg = load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "x", *FAST))
    node = {"partition-id": 1, "num-partitions": 2}
    assert count_site_examples(cfg, node) == (1, len(load_site(cfg, node).examples))
    with pytest.raises(ConfigError, match="test-fault: 'boom'"):
        count_site_examples(cfg, {**node, "test-fault": "boom"})


# --- real processes on 127.0.0.1 --------------------------------------------------------------


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "global_adapter" / "adapter_model.safetensors"))


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def _in_process(model_dir: Path, out: Path, *extra: str, config: Path = QUICKSTART) -> Path:
    return run_experiment(load_config(config, tiny_args(model_dir, out, *FAST, *extra))).run_dir


def _check_same_as_in_process(
    federation: Federation,
    model_dir: Path,
    tmp: Path,
    *extra: str,
    config: Path = QUICKSTART,
    worker: bool = False,
    node: dict[str, object] | None = None,
):
    for client in range(2):
        node_config = {**(node or {}), "partition-id": client, "num-partitions": 2}
        federation.add_node(node_config, worker=worker)
    result = federation.run(str(config), *tiny_args(model_dir, tmp / "flower", *FAST, *extra))
    assert (tmp / "flower" / "global_adapter").is_dir(), result.stdout + federation.logs()
    expected = _in_process(model_dir, tmp / "local", *extra, config=config)
    local, remote = _adapter(expected), _adapter(tmp / "flower")
    assert local.keys() == remote.keys()
    assert max((local[k] - remote[k]).abs().max().item() for k in local) <= 1e-5
    assert _files(tmp / "flower") == _files(expected)
    return result


def test_flower_with_tls_and_site_workers_matches_in_process(tiny_model_dir, tmp_path):
    certificates = write_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"], bits=2048)
    with Federation(tmp_path, certificates) as federation:
        _check_same_as_in_process(federation, tiny_model_dir, tmp_path, worker=True)
    # Each site's worker loaded the base model once for the run: in round 1, not round 2.
    rounds = [json.loads(line) for line in (tmp_path / "flower" / "metrics.jsonl").open()]
    loaded = {
        row["round"]: sorted(m["model_loaded"] for m in row["client_metrics"].values())
        for row in rounds
        if row["round"] > 0
    }
    assert loaded == {1: [1.0, 1.0], 2: [0.0, 0.0]}


@pytest.mark.slow  # the TLS test above runs the same path; this one adds only --insecure
def test_flower_insecure_matches_in_process(tiny_model_dir, tmp_path):
    with Federation(tmp_path) as federation:
        result = _check_same_as_in_process(federation, tiny_model_dir, tmp_path)
    assert "without TLS" in result.stderr  # insecure was asked for explicitly, and warned about


@pytest.mark.slow  # two more SuperNode runs (~3 min on 2 busy cores); the TLS test covers the path
def test_flower_private_run_matches_in_process_adapter_and_epsilon(tiny_model_dir, tmp_path):
    # Client-level DP with the noise added by the clients. A site's noise is secret unless the
    # site itself opts into seeding it (its node config's reproducible-noise, which the run
    # config cannot set): then each share is seeded from the client's seed, so the SuperNodes
    # draw exactly what the in-process clients draw with privacy.reproducible_noise=true.
    dp = ("privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=0.7")
    dp += ("privacy.reproducible_noise=true",)
    with Federation(tmp_path) as federation:
        node = {"reproducible-noise": True}
        _check_same_as_in_process(federation, tiny_model_dir, tmp_path, *dp, node=node)
    remote = _last_round(tmp_path / "flower")["privacy"]
    local = _last_round(tmp_path / "local")["privacy"]
    assert remote == local and remote["epsilon"] > 0  # the same ε, reported void by both
    assert "reproducible_noise" in remote["void"]


@pytest.mark.slow  # real SuperLink and SuperNodes; train_site's DPO path runs in the default suite
def test_flower_feddpo_matches_in_process(tiny_model_dir, tmp_path):
    # FedDPO from an instruction-tuned adapter, as configs/dpo.yaml runs it: each SuperNode reads
    # its preference pairs and the starting adapter, and the result equals the in-process run.
    sft = _in_process(tiny_model_dir, tmp_path / "sft", "federation.rounds=1")
    with Federation(tmp_path) as federation:
        start = f"model.adapter={sft / 'global_adapter'}"
        _check_same_as_in_process(federation, tiny_model_dir, tmp_path, start, config=DPO)
    remote, local = _last_round(tmp_path / "flower"), _last_round(tmp_path / "local")
    for client, metrics in remote["client_metrics"].items():
        assert metrics["reward_accuracy"] == local["client_metrics"][client]["reward_accuracy"]
        assert metrics["dpo_loss"] == pytest.approx(local["client_metrics"][client]["dpo_loss"])
    assert remote["eval"]["reward_accuracy"] == local["eval"]["reward_accuracy"]


def _last_round(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def test_malformed_update_from_a_real_supernode_is_rejected(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        federation.add_node({**ONE_THREAD, "partition-id": 0, "num-partitions": 2})
        federation.add_node(
            {**ONE_THREAD, "partition-id": 1, "num-partitions": 2, "test-fault": "nan"}
        )
        items = tiny_args(tiny_model_dir, out, *FAST, "federation.rounds=1")
        result = federation.run(str(QUICKSTART), *items, "federation.min_fit_clients=1")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output + federation.logs()
    assert "client 1: malformed reply rejected" in output and "NaN" in output, output
    record = _last_round(out)
    assert record["selected_clients"] == [0, 1]
    assert list(record["train_loss"]) == ["0"]  # the NaN update was not aggregated
    assert (out / "global_adapter").is_dir()
    assert all(torch.isfinite(t).all() for t in _adapter(out).values())


def _run_with_a_dead_node(federation: Federation, model_dir: Path, out: Path, *extra: str):
    """Node 1 stalls once it holds its round-1 instruction; it is killed right then.

    Node 0 must still answer within ``flower.reply_timeout`` (its ClientApp loads the model in a
    fresh process); 15 s was too tight on a loaded 2-core machine, so the wait is 30 s.
    """
    federation.add_node({**ONE_THREAD, "partition-id": 0, "num-partitions": 2})
    federation.add_node(
        {**ONE_THREAD, "partition-id": 1, "num-partitions": 2, "test-fault": "stall"}
    )
    run = federation.start_run(
        str(QUICKSTART),
        *tiny_args(model_dir, out, *FAST, "federation.rounds=1", "flower.reply_timeout=30", *extra),
    )
    node_log = federation.root / "supernode1.log"
    deadline = time.monotonic() + 120
    while "test-fault stall" not in node_log.read_text(errors="replace"):
        assert run.poll() is None and time.monotonic() < deadline, federation.logs()
        time.sleep(0.2)
    federation.kill_node(1)  # in the middle of round 1: its ClientApp has the instruction
    killed = time.monotonic()
    output, _ = run.communicate(timeout=120)
    return output, time.monotonic() - killed, run


def test_killed_supernode_round_completes_with_the_rest(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        output, seconds, run = _run_with_a_dead_node(federation, tiny_model_dir, out)
    assert run.returncode == 0, output
    assert (out / "global_adapter").is_dir(), output
    record = _last_round(out)
    assert record["selected_clients"] == [0, 1]
    assert list(record["train_loss"]) == ["0"]  # aggregated from the client that answered
    assert "going on without clients [1]" in output
    assert "without TLS" in output  # insecure was asked for explicitly, and warned about
    assert seconds < 90  # flower.reply_timeout=30 bounds the wait


@pytest.mark.slow  # the same path as above up to the min_fit_clients check (unit-tested)
def test_killed_supernode_below_min_fit_fails_clearly(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    with Federation(tmp_path) as federation:
        output, seconds, run = _run_with_a_dead_node(
            federation, tiny_model_dir, out, "federation.min_fit_clients=2"
        )
    assert "no usable reply from clients [1]" in output
    assert run.returncode == 1  # fedit flower run reports the failed run
    assert not (out / "global_adapter").exists()
    assert seconds < 90


@pytest.mark.slow
def test_only_registered_supernodes_join(tiny_model_dir, tmp_path):
    import subprocess

    from fedit.engines.flower_launch import executable, write_connection

    certificates = write_certificates(tmp_path / "certs", ["127.0.0.1"], bits=2048)
    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("registered", "stranger"):
        command = ["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", keys / name]
        subprocess.run(command, check=True)
    with Federation(tmp_path, certificates, auth=True) as federation:
        cfg = load_config(
            QUICKSTART,
            ["engine=flower", f"flower.superlink={federation.address}"]
            + [f"flower.root_certificates={certificates / 'ca.crt'}"],
        )
        write_connection(federation.home, cfg)
        register = [executable("flwr"), "supernode", "register", keys / "registered.pub", "fedit"]
        subprocess.run(register, env=federation.env, check=True, capture_output=True)
        node = {"partition-id": 0, "num-partitions": 1}
        federation.add_node(node, auth_key=keys / "registered")
        federation.add_node(node, auth_key=keys / "stranger")
        items = tiny_args(tiny_model_dir, tmp_path / "run", *FAST, "federation.rounds=1")
        result = federation.run(str(QUICKSTART), *items, "federation.num_clients=1")
        assert (tmp_path / "run" / "global_adapter").is_dir(), result.stdout + federation.logs()
        stranger = (tmp_path / "supernode1.log").read_text(errors="replace")
    assert "client 0 is node" in result.stdout + result.stderr
    assert "Failed to activate SuperNode" in stranger, stranger[-2000:]  # refused (exit 305)


def test_certificates_refuse_a_used_folder_and_a_missing_openssl(tmp_path, monkeypatch, capsys):
    from fedit.cli.main import main

    used = tmp_path / "used"
    used.mkdir()
    (used / "ca.crt").write_text("the CA the sites already hold")
    assert main(["flower", "certificates", str(used)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (used / "ca.crt").read_text() == "the CA the sites already hold"
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert main(["flower", "certificates", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert "openssl is not installed" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "new").exists()


@pytest.mark.slow  # a SuperLink, two SuperNodes and a closing round (~1.5 min)
def test_a_sites_own_model_stays_in_its_state_dir(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    state_dirs = [tmp_path / f"site{c}" for c in range(2)]
    with Federation(tmp_path) as federation:
        for client, state in enumerate(state_dirs):
            node = {"partition-id": client, "num-partitions": 2, "state-dir": str(state)}
            federation.add_node(node)
        result = federation.run(
            str(QUICKSTART),
            *tiny_args(tiny_model_dir, out, *FAST, "personalization.method=finetune"),
        )
    assert (out / "personalize.json").is_file(), result.stdout + result.stderr[-3000:]
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    server_files = [p for p in out.rglob("*") if p.is_file()]
    assert not (out / "personal").exists() and not (out / "clients").exists()
    for client, state in enumerate(state_dirs):
        own = state / run_id / "personal" / f"client-{client}"
        weights = (own / "adapter_model.safetensors").read_bytes()
        assert (state / run_id).stat().st_mode & 0o077 == 0  # owner-only
        tensor_bytes = weights[-4096:]  # the end of the tensor data, not the header
        assert not any(tensor_bytes in p.read_bytes() for p in server_files)


KEPT = {"fedsa": "fedsa/lora_B/", "ditto": "ditto/personal/"}  # each method's ClientState keys


def _nbytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


@pytest.mark.slow  # a SuperLink, two SuperNodes, two rounds and a closing round (~2 min each)
@pytest.mark.parametrize("method", ["fedsa", "ditto"])
def test_a_sites_kept_state_stays_in_its_state_dir(tiny_model_dir, tmp_path, method):
    out = tmp_path / "run"
    personal = (f"personalization.method={method}",)
    state_dirs = [tmp_path / f"site{c}" for c in range(2)]
    with Federation(tmp_path) as federation:
        for client, state in enumerate(state_dirs):
            node = {"partition-id": client, "num-partitions": 2, "state-dir": str(state)}
            federation.add_node(node)
        result = federation.run(str(QUICKSTART), *tiny_args(tiny_model_dir, out, *FAST, *personal))
    assert (out / "personalize.json").is_file(), result.stdout + result.stderr[-3000:]
    assert json.loads((out / "personalize.json").read_text())["published"] == [0, 1]
    assert not (out / "personal").exists() and not (out / "clients").exists()
    server_files = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    # The sites trained what the in-process clients train: fedsa's (A, mean B) is built from
    # the B each site reported at close.
    local = _in_process(tiny_model_dir, tmp_path / "local", *personal)
    torch.testing.assert_close(_adapter(out), _adapter(local), rtol=0, atol=1e-5)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    for client, state in enumerate(state_dirs):
        site = state / run_id
        assert site.stat().st_mode & 0o077 == 0  # owner-only
        kept = sorted(p.name for p in (site / "clients" / str(client)).iterdir())
        assert kept == ["state-a001-r0001.safetensors", "state-a001-r0002.safetensors"]
        own = Path("personal") / f"client-{client}" / "adapter_model.safetensors"
        for relative in (*(Path("clients") / str(client) / name for name in kept), own):
            expected = load_file(str(local / relative))
            torch.testing.assert_close(load_file(str(site / relative)), expected, rtol=0, atol=1e-5)
        newest = load_file(str(site / "clients" / str(client) / kept[-1]))
        assert newest and all(key.startswith(KEPT[method]) for key in newest)
        for key, tensor in newest.items():  # B_i or v_k: on no server-side file
            assert not any(tensor.numpy().tobytes() in data for data in server_files), key
    if method == "fedsa":  # each round's reply carried A and a header, and no B
        final = load_file(str(out / "checkpoints" / "round_002" / "adapter_model.safetensors"))
        a_bytes = _nbytes({k: t for k, t in final.items() if ".lora_A." in k})
        b_bytes = _nbytes(final) - a_bytes
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        ups = [m["bytes_up"] for row in rows for m in row.get("client_metrics", {}).values()]
        assert len(ups) == 4 and all(a_bytes < up < a_bytes + b_bytes / 4 for up in ups), ups


@pytest.mark.slow  # two SuperNodes, three rounds, and a restart that outlasts Flower's heartbeats
def test_a_site_restarted_mid_round_picks_its_state_up(tiny_model_dir, tmp_path):
    # Site 0 is killed in round 2 while it holds its instruction, and started again with the
    # same node config: the SuperLink registers it as a new node, the server sends it the same
    # instruction once the old node has left (two missed heartbeats, 60 s), and the site reads
    # its round-1 state from its state-dir. Nothing may differ from the in-process run.
    out = tmp_path / "run"
    personal = ("personalization.method=fedsa", "federation.rounds=3")
    sites = [
        {
            **ONE_THREAD,
            "partition-id": c,
            "num-partitions": 2,
            "state-dir": str(tmp_path / f"site{c}"),
        }
        for c in range(2)
    ]
    with Federation(tmp_path) as federation:
        federation.add_node({**sites[0], "test-fault": "stall", "test-fault-round": 2})
        federation.add_node(sites[1])
        # 300 s: the wait for the old node to leave, then a fresh ClientApp that loads the model
        # and trains, on a loaded 2-core machine.
        items = tiny_args(tiny_model_dir, out, *FAST, *personal, "flower.reply_timeout=300")
        run = federation.start_run(str(QUICKSTART), *items)
        node_log = tmp_path / "supernode0.log"
        deadline = time.monotonic() + 300
        while "test-fault stall" not in node_log.read_text(errors="replace"):
            assert run.poll() is None and time.monotonic() < deadline, federation.logs()
            time.sleep(0.2)
        federation.kill_node(0)  # in round 2: its ClientApp holds the instruction
        federation.restart_node(0, sites[0])  # the same site, no fault
        output, _ = run.communicate(timeout=900)
        assert run.returncode == 0, output + federation.logs()
    assert "client 0 rejoined as node" in output, output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(row["train_loss"]) for row in rows if row["round"] > 0] == [["0", "1"]] * 3
    assert json.loads((out / "personalize.json").read_text())["published"] == [0, 1]
    local = _in_process(tiny_model_dir, tmp_path / "local", *personal)
    torch.testing.assert_close(_adapter(out), _adapter(local), rtol=0, atol=1e-5)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    for client in range(2):
        site = tmp_path / f"site{client}" / run_id
        kept = sorted(p.name for p in (site / "clients" / str(client)).iterdir())
        assert kept == ["state-a001-r0002.safetensors", "state-a001-r0003.safetensors"]
        own = Path("personal") / f"client-{client}" / "adapter_model.safetensors"
        for relative in (*(Path("clients") / str(client) / name for name in kept), own):
            expected = load_file(str(local / relative))
            torch.testing.assert_close(load_file(str(site / relative)), expected, rtol=0, atol=1e-5)
