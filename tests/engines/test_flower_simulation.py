"""engine: flower-simulation: Flower's simulation runtime on Ray, against the in-process engine.

The runs start Ray in this process (``fedit.flower_simulation`` does), so the test can check
that no Ray process is left when the run returns. Each costs Ray's start-up (several seconds).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")
ray = pytest.importorskip("ray")

from fedit.config import ConfigError, load_config  # noqa: E402
from fedit.experiment import run_experiment  # noqa: E402
from fedit.flower_simulation import (  # noqa: E402
    RayStartError,
    check_gpus,
    parallel_clients,
    run_flower_simulation,
)
from fedit.server.loop import RoundFailedError  # noqa: E402
from helpers import (  # noqa: E402
    check_nothing_per_client_in_the_clear,
    record_replies,
    simulate_until_killed,
    tiny_args,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# Two clients, both selected each round, trained by two Ray actors at once (one CPU each).
FAST = (
    "eval.generate=false",
    "data.synthetic.num_examples=80",
    "federation.num_clients=2",
    "federation.fraction_fit=1.0",
    "flower.simulation.num_cpus=2",
    "flower.simulation.client_cpus=1",
)
SIM = "engine=flower-simulation"
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "plasma", "dashboard", "log_monitor")


def _config(model_dir: Path, out: Path, *extra: str):
    return load_config(QUICKSTART, tiny_args(model_dir, out, *FAST, *extra))


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "global_adapter" / "adapter_model.safetensors"))


def _files(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


def _rounds(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row["round"] > 0]


def _ray_children() -> list[str]:
    names = []
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline()) or child.name()
        except psutil.NoSuchProcess:
            continue
        if any(mark in command for mark in RAY_PROCESSES):
            names.append(command[:80])
    return names


def _assert_same(local: Path, remote: Path) -> None:
    expected, got = _adapter(local), _adapter(remote)
    assert expected.keys() == got.keys()
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) <= 1e-5
    assert _files(remote) == _files(local)


def test_simulation_matches_in_process_loads_once_per_actor_and_leaves_no_ray(
    tiny_model_dir, tmp_path
):
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local")).run_dir
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM))
    assert not ray.is_initialized() and _ray_children() == []
    _assert_same(local, outcome.run_dir)
    rounds = _rounds(outcome.run_dir)
    messages = [m for row in rounds for m in row["client_metrics"].values()]
    assert len(rounds) == 2 and len(messages) == 4
    # Two actors, each loading the base model on its first message and keeping it.
    loads = sum(m["model_loaded"] for m in messages)
    assert 1 <= loads <= 2 < len(messages)
    assert all(m["load_seconds"] == 0 for m in messages if not m["model_loaded"])


@pytest.mark.slow  # two more Ray runs; the path is the one above
def test_simulation_resumes_like_in_process(tiny_model_dir, tmp_path):
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local")).run_dir
    sim = tmp_path / "sim"
    run_flower_simulation(_config(tiny_model_dir, sim, SIM, "federation.rounds=1"))
    resumed = run_flower_simulation(_config(tiny_model_dir, sim, SIM, "resume=true"))
    _assert_same(local, resumed.run_dir)
    assert [row["round"] for row in _rounds(sim)] == [1, 2]


@pytest.mark.slow  # one more Ray run
def test_crashing_virtual_client_fails_the_round_naming_it(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path / "sim", SIM, "federation.min_fit_clients=2")
    with pytest.raises(RoundFailedError, match=r"round 1: .*clients \[1\]"):
        run_flower_simulation(cfg, node_extras={1: {"test-fault": "crash"}})
    assert not ray.is_initialized() and _ray_children() == []


PRIVATE = ("privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=1.0")


@pytest.mark.slow  # one more Ray run; the in-process engine's replies are checked by default
def test_private_simulation_sends_and_writes_nothing_per_client(
    tiny_model_dir, tmp_path, monkeypatch
):
    from fedit.engines import messages

    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *PRIVATE)).run_dir
    # The ServerApp runs in a thread of this process; engines.flower imports unpack_update from
    # engines.messages at each reply, so this records every reply as the server decoded it.
    replies = record_replies(monkeypatch, messages)
    run = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *PRIVATE)).run_dir
    assert not ray.is_initialized() and _ray_children() == []
    assert len(replies) == 4  # two clients, two rounds
    # Both clients every round: the selection is no secret, so who answered may be recorded.
    assert json.loads((run / "privacy.json").read_text())["sampling"] == "all"
    check_nothing_per_client_in_the_clear(run, replies, selection_private=False)
    # ε comes from the plan and the rounds done: the same as in-process, round by round.
    privacy = [row["privacy"] for row in _rounds(run)]
    assert privacy == [row["privacy"] for row in _rounds(local)] and privacy[-1]["epsilon"] > 0
    assert not any("void" in record for record in privacy)


@pytest.mark.slow  # one more Ray run
def test_private_simulation_with_reproducible_noise_matches_in_process(tiny_model_dir, tmp_path):
    # privacy.reproducible_noise reaches each virtual site as its node config's
    # reproducible-noise, so the sites seed their noise shares as the in-process clients do.
    dp = (*PRIVATE, "privacy.reproducible_noise=true")
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *dp)).run_dir
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *dp))
    _assert_same(local, outcome.run_dir)
    privacy = [row["privacy"] for row in _rounds(outcome.run_dir)]
    assert privacy == [row["privacy"] for row in _rounds(local)]
    assert all("reproducible_noise" in record["void"] for record in privacy)


def test_too_many_gpus_is_one_line_before_ray_starts(tiny_model_dir, tmp_path):
    cfg = _config(tiny_model_dir, tmp_path / "sim", SIM, "flower.simulation.client_gpus=0.5")
    with pytest.raises(ConfigError, match="client_gpus: each client asks for 0.5 GPUs"):
        check_gpus(cfg, available=0)
    cfg = _config(tiny_model_dir, tmp_path / "sim", SIM, "flower.simulation.num_gpus=8")
    with pytest.raises(ConfigError, match="num_gpus: 8 GPUs asked for, this machine has 1"):
        check_gpus(cfg, available=1)
    cfg = _config(tiny_model_dir, tmp_path / "sim", SIM, "flower.simulation.client_gpus=2")
    with pytest.raises(ConfigError, match="each client asks for 2 GPUs, this machine has 1"):
        check_gpus(cfg, available=1)
    # Through the real entry point on this machine: refused before Ray or any file.
    if torch.cuda.device_count() == 0:
        cfg = _config(tiny_model_dir, tmp_path / "sim", SIM, "flower.simulation.client_gpus=1")
        with pytest.raises(ConfigError, match="no CUDA GPU visible"):
            run_flower_simulation(cfg)
        assert not ray.is_initialized() and not (tmp_path / "sim").exists()


def test_cli_run_refuses_missing_gpus_in_one_line(tiny_model_dir, tmp_path, capsys):
    from fedit.cli.main import main

    items = tiny_args(tiny_model_dir, tmp_path / "sim", *FAST, SIM, "flower.simulation.num_gpus=64")
    assert main(["run", str(QUICKSTART), *items]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedit: error: flower.simulation.num_gpus: 64 GPUs asked for")
    assert len(err.splitlines()) == 1 and not (tmp_path / "sim").exists()
    assert not ray.is_initialized()


def test_run_experiment_refuses_the_simulation_engine_without_its_runtime(tmp_path):
    with pytest.raises(ConfigError, match="engine=flower-simulation: start it with `fedit run"):
        run_experiment(load_config(QUICKSTART, [SIM, f"output_dir={tmp_path}"]))


def test_gpu_fractions_set_how_many_clients_train_at_once(tiny_model_dir, tmp_path):
    def parallel(*extra: str, cpus: int, gpus: int) -> int:
        cfg = _config(tiny_model_dir, tmp_path, SIM, "federation.num_clients=8", *extra)
        return parallel_clients(cfg, cpus, gpus)

    assert parallel("flower.simulation.client_gpus=0.25", cpus=16, gpus=1) == 4
    assert parallel("flower.simulation.client_gpus=1", cpus=16, gpus=8) == 8
    assert parallel("flower.simulation.client_cpus=2", cpus=4, gpus=0) == 2


def test_ray_failing_to_start_is_one_line_and_leaves_nothing(tiny_model_dir, tmp_path, monkeypatch):
    # Ray keeps its session files under $RAY_TMPDIR: one that cannot exist stops its start.
    monkeypatch.setenv("RAY_TMPDIR", "/proc/no-such-dir")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # ignored: fedit starts a Ray of its own
    cfg = _config(tiny_model_dir, tmp_path / "sim", SIM)
    with pytest.raises(
        RayStartError, match="^engine flower-simulation: Ray could not start: "
    ) as e:
        run_flower_simulation(cfg)
    assert "\n" not in str(e.value)
    assert not ray.is_initialized() and _ray_children() == []
    assert not (tmp_path / "sim").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("flower.simulation.num_supernodes=3", "num_supernodes: 3 differs from"),
        ("flower.simulation.client_cpus=0", "client_cpus: must be > 0"),
        ("flower.simulation.client_gpus=0.3", "0.3 does not divide a GPU"),
    ],
)
def test_simulation_keys_are_checked(tiny_model_dir, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        _config(tiny_model_dir, tmp_path, SIM, override)


def test_site_node_configs_and_site_policy_become_the_virtual_supernodes_node_config(
    tiny_model_dir, tmp_path
):
    from fedit.client.site_policy import SitePolicy
    from fedit.flower_simulation import _site_node_configs

    # Every virtual site states its noise policy (secret noise by default), as a SuperNode's
    # node config would; the attackers are marked on top.
    cfg = _config(tiny_model_dir, tmp_path, SIM, "attack.kind=sign_flip", "attack.clients=[1]")
    secret = {"reproducible-noise": False}
    assert _site_node_configs(cfg, {0: {"test-fault": "nan"}}) == {
        0: {**secret, "test-fault": "nan"},
        1: {**secret, "malicious": True},
    }
    assert _site_node_configs(_config(tiny_model_dir, tmp_path, SIM), {}) == {0: secret, 1: secret}
    # The in-process sites' floor and reproducible noise reach each virtual site, which reads
    # back the very policy the in-process engine gives its sites.
    policy = (
        "privacy.site_min_noise_multiplier=2",
        "privacy.site_max_clip_norm=1",
        "privacy.reproducible_noise=true",
    )
    cfg = _config(tiny_model_dir, tmp_path, SIM, *policy)
    node = {"reproducible-noise": True, "min-noise-multiplier": 2.0, "max-clip-norm": 1.0}
    assert _site_node_configs(cfg, {1: {"test-fault": "nan"}}) == {
        0: node,
        1: {**node, "test-fault": "nan"},
    }
    assert SitePolicy.from_node_config(node) == SitePolicy.from_config(cfg.privacy)
    assert SitePolicy.from_config(cfg.privacy) == SitePolicy(2.0, 1.0, reproducible_noise=True)


def test_secure_aggregation_runs_on_the_simulation_runtime(tiny_model_dir, tmp_path):
    """The clients' keys and shares live in Flower's context.state between messages, which
    the simulation runtime keeps per virtual SuperNode: a secure round completes there."""
    three = ("federation.num_clients=3", "privacy.secure_aggregation=true", "federation.rounds=1")
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *three))
    plain = run_experiment(
        _config(
            tiny_model_dir, tmp_path / "local", "federation.num_clients=3", "federation.rounds=1"
        )
    ).run_dir
    record = _rounds(outcome.run_dir)[0]
    secure = record["aggregation"]["secure_aggregation"]
    assert secure["clients"] == [0, 1, 2] and record["client_metrics"] == {}
    expected, got = _adapter(plain), _adapter(outcome.run_dir)
    largest = max(t.abs().max().item() for t in expected.values())
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= secure["error_bound"] + 2 * torch.finfo(torch.float32).eps * largest


@pytest.mark.slow  # one more Ray run; the driver is the in-process one, tested by default
def test_fedbuff_on_the_simulation_runtime_matches_in_process(tiny_model_dir, tmp_path):
    fedbuff = (
        "strategy.name=fedbuff",
        "federation.system.profiles=sampled",
        "federation.num_clients=4",
        "federation.fraction_fit=0.5",  # two clients train at once, one update a buffer
        "strategy.buffer_size=1",
    )
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *fedbuff))
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *fedbuff)).run_dir
    expected, got = _adapter(local), _adapter(outcome.run_dir)
    assert max((expected[k] - got[k]).abs().max().item() for k in expected) == 0
    staleness = [row["aggregation"]["staleness"] for row in _rounds(outcome.run_dir)]
    assert staleness == [row["aggregation"]["staleness"] for row in _rounds(local)]
    assert any(set(histogram) != {"0"} for histogram in staleness)  # some update was stale


@pytest.mark.slow  # one more Ray run; the client's store is the in-process one, tested by default
def test_scaffold_on_the_simulation_runtime_keeps_c_i_in_the_run_folder(tiny_model_dir, tmp_path):
    scaffold = ("strategy.name=scaffold", "federation.rounds=3")
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *scaffold))
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *scaffold)).run_dir
    _assert_same(local, outcome.run_dir)  # the same files, clients/<id>/ included
    for client in (0, 1):
        kept = sorted(p.name for p in (outcome.run_dir / "clients" / str(client)).iterdir())
        assert kept == ["state-a001-r0002.safetensors", "state-a001-r0003.safetensors"]
        for name in kept:
            torch.testing.assert_close(
                load_file(str(outcome.run_dir / "clients" / str(client) / name)),
                load_file(str(local / "clients" / str(client) / name)),
                rtol=0,
                atol=1e-5,
            )


NAMESPACES = {"fedsa": "fedsa/lora_B/", "ditto": "ditto/personal/"}  # what a client keeps


def _assert_same_tensors(local: Path, remote: Path, relative: Path) -> None:
    torch.testing.assert_close(
        load_file(str(remote / relative)), load_file(str(local / relative)), rtol=0, atol=1e-5
    )


@pytest.mark.slow  # a Ray run each; the clients' stores are the in-process ones, tested by default
@pytest.mark.parametrize("method", ["fedsa", "ditto"])
def test_personalization_on_the_simulation_runtime_keeps_state_in_the_run_folder(
    tiny_model_dir, tmp_path, method
):
    personal = (f"personalization.method={method}",)
    outcome = run_flower_simulation(_config(tiny_model_dir, tmp_path / "sim", SIM, *personal))
    assert not ray.is_initialized() and _ray_children() == []
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *personal)).run_dir
    # The same files (clients/<id>/, personal/client-<id>/, personalize.json included) and the
    # same global adapter: for fedsa (A, mean B), built from the B each virtual site reported.
    _assert_same(local, outcome.run_dir)
    record = json.loads((outcome.run_dir / "personalize.json").read_text())
    assert record["published"] == [0, 1] and record["method"] == method
    for client in (0, 1):
        kept = sorted(p.name for p in (outcome.run_dir / "clients" / str(client)).iterdir())
        assert kept == ["state-a001-r0001.safetensors", "state-a001-r0002.safetensors"]
        for name in kept:
            _assert_same_tensors(local, outcome.run_dir, Path("clients") / str(client) / name)
        state = load_file(str(outcome.run_dir / "clients" / str(client) / kept[-1]))
        assert state and all(key.startswith(NAMESPACES[method]) for key in state)
        own = Path("personal") / f"client-{client}" / "adapter_model.safetensors"
        _assert_same_tensors(local, outcome.run_dir, own)


def _session(leader: int) -> list[str]:
    """The processes still in the session that ``leader`` started."""
    found = []
    for process in psutil.process_iter(["pid", "name"]):
        try:
            if os.getsid(process.pid) == leader:
                found.append(f"{process.pid} {process.info['name']}")
        except (ProcessLookupError, PermissionError):
            continue
    return found


@pytest.mark.slow  # two Ray runs and an in-process one; the in-process kill runs by default
def test_scaffold_killed_mid_round_on_the_simulation_runtime_resumes_bit_identically(
    tiny_model_dir, tmp_path
):
    scaffold = ("strategy.name=scaffold", "federation.rounds=3")
    local = run_experiment(_config(tiny_model_dir, tmp_path / "local", *scaffold)).run_dir
    killed = tmp_path / "sim"
    args = tiny_args(tiny_model_dir, killed, *FAST, SIM, *scaffold)
    child = multiprocessing.get_context("spawn").Process(
        target=simulate_until_killed, args=(str(QUICKSTART), args, "round 2")
    )
    child.start()
    child.join(timeout=600)
    assert child.exitcode == -signal.SIGKILL
    # Both clients saved round 2's c_i; round 2 never completed.
    for client in (0, 1):
        assert (killed / "clients" / str(client) / "state-a001-r0002.safetensors").is_file()
    assert not (killed / "checkpoints" / "round_002" / "round.json").exists()
    deadline = time.monotonic() + 30
    while _session(child.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _session(child.pid) == []  # Ray went with the group: no orphans

    resumed = run_flower_simulation(_config(tiny_model_dir, killed, SIM, *scaffold, "resume=true"))
    assert not ray.is_initialized() and _ray_children() == []
    torch.testing.assert_close(_adapter(resumed.run_dir), _adapter(local), rtol=0, atol=0)
    for client in (0, 1):
        names = sorted(p.name for p in (killed / "clients" / str(client)).iterdir())
        assert names == ["state-a002-r0002.safetensors", "state-a002-r0003.safetensors"]
        newest = load_file(str(killed / "clients" / str(client) / names[-1]))
        expected = load_file(str(local / "clients" / str(client) / "state-a001-r0003.safetensors"))
        torch.testing.assert_close(newest, expected, rtol=0, atol=0)
