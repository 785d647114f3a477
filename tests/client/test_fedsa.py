"""FedSA-LoRA (``personalization.method=fedsa``): A travels and is averaged, each client's B
stays in its store, and the server's B never moves (client.fedsa, strategy.personalized,
server.closing)."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli.main import main
from fedit.client.fedsa import FEDSA_B
from fedit.client.state import ClientStateStore, Stamp
from fedit.client.train import train_local
from fedit.config import load_config
from fedit.config.personalization import PersonalizationConfig
from fedit.experiment import RunOutcome, run_experiment
from fedit.model.lora import load_adapter_state
from fedit.server.checkpoint import RUN_FILE
from fedit.server.closing import mean_b
from fedit.server.loop import round_lr
from fedit.strategy.base import Strategy
from fedit.strategy.personalized import Personalized
from fedit.strategy.selection import client_seed
from fedit.types import AdapterState, unprefixed
from helpers import run_until_killed, tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ROUNDS = 2  # tiny_args: 4 clients, 2 a round
FEDSA = ("eval.generate=false", "personalization.method=fedsa")


def _run(model_dir: Path, out: Path, *extra: str) -> RunOutcome:
    return run_experiment(load_config(QUICKSTART, tiny_args(model_dir, out, *extra)))


@pytest.fixture(scope="module")
def fedsa_run(tiny_model_dir, tmp_path_factory) -> RunOutcome:
    """fedsa_global=auto, which is mean_b without client-level DP or secure aggregation."""
    return _run(tiny_model_dir, tmp_path_factory.mktemp("fedsa") / "run", *FEDSA)


@pytest.fixture(scope="module")
def fedsa_none_run(tiny_model_dir, tmp_path_factory) -> RunOutcome:
    out = tmp_path_factory.mktemp("fedsa_none") / "run"
    return _run(tiny_model_dir, out, *FEDSA, "personalization.fedsa_global=none")


@pytest.fixture(scope="module")
def fedavg_run(tiny_model_dir, tmp_path_factory) -> RunOutcome:
    return _run(tiny_model_dir, tmp_path_factory.mktemp("fedavg") / "run", "eval.generate=false")


def _checkpoint(run: Path, server_round: int) -> AdapterState:
    return load_adapter_state(run / "checkpoints" / f"round_{server_round:03d}")


def _own_b(run: Path) -> dict[int, AdapterState]:
    """Every client's B_i as the closing round (R + 1) reads it from the store."""
    record = json.loads((run / RUN_FILE).read_text())
    stamp = Stamp(record["run_id"], tuple(record["attempts"]), ROUNDS + 1)
    store = ClientStateStore.for_run(run)
    return {c: unprefixed(FEDSA_B, store.load(c, stamp)) for c in store.clients()}


def _selected(outcome: RunOutcome) -> dict[int, list[int]]:
    return {r["round"]: r["selected_clients"] for r in outcome.history if r["round"] > 0}


def _nbytes(state: AdapterState) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def _equal(one: AdapterState, other: AdapterState) -> bool:
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_fedsa_uploads_only_a(fedsa_run, fedavg_run):
    final = _checkpoint(fedsa_run.run_dir, ROUNDS)
    share = _nbytes({k: t for k, t in final.items() if ".lora_A." in k}) / _nbytes(final)
    assert 0.5 < share < 0.6  # k_proj and v_proj have d_out 32 of 64: A is 4/7, not half
    assert _selected(fedsa_run) == _selected(fedavg_run)
    for fedsa, fedavg in zip(fedsa_run.history[1:], fedavg_run.history[1:], strict=True):
        ups = {c: m["bytes_up"] for c, m in fedsa["client_metrics"].items()}
        for client, metrics in fedavg["client_metrics"].items():
            headers = metrics["bytes_up"] - _nbytes(final)  # all of FedAvg's reply but tensors
            assert 0 < headers < 0.05 * _nbytes(final)
            assert abs(ups[client] - share * metrics["bytes_up"]) <= headers, (client, ups)


def test_the_server_keeps_b_init_and_moves_a(fedsa_run):
    run = fedsa_run.run_dir
    first, last = _checkpoint(run, 1), _checkpoint(run, ROUNDS)
    initial = fedsa_run.setup.server.initial_state()
    for name, tensor in last.items():
        if ".lora_B." in name:
            assert torch.equal(tensor, initial[name]) and torch.equal(first[name], initial[name])
        else:
            assert not torch.equal(tensor, first[name]), name


def test_b_differs_per_client_after_two_rounds(fedsa_run):
    own = _own_b(fedsa_run.run_dir)
    trained = sorted({c for clients in _selected(fedsa_run).values() for c in clients})
    assert sorted(own) == trained and len(trained) >= 2
    initial = fedsa_run.setup.server.initial_state()
    for client, b in own.items():
        assert b and all(".lora_B." in k for k in b)
        assert all(not torch.equal(t, initial[k]) for k, t in b.items()), client
    for one in trained:
        for other in trained:
            if one < other:
                assert not any(torch.equal(own[one][k], own[other][k]) for k in own[one])


def test_a_client_trains_from_the_global_a_and_its_own_b(fedsa_run):
    selected = _selected(fedsa_run)
    both = sorted(set(selected[1]) & set(selected[2]))
    assert both, selected  # the seeded selection has a client in both rounds
    client = both[0]
    cfg, run, setup = fedsa_run.setup.server.cfg, fedsa_run.run_dir, fedsa_run.setup
    folder = run / "clients" / str(client)
    kept = unprefixed(FEDSA_B, load_file(folder / "state-a001-r0001.safetensors"))
    start = {k: kept.get(k, t) for k, t in _checkpoint(run, 1).items()}  # (A_1, B_i)
    expected = train_local(
        setup.server.model,
        setup.client_data[client],
        cfg.train,
        client_id=client,
        lr=round_lr(cfg, 2),
        seed=client_seed(cfg.seed, 2, client),
        global_state=start,
    )
    saved = unprefixed(FEDSA_B, load_file(folder / "state-a001-r0002.safetensors"))
    assert saved.keys() == kept.keys()
    assert all(torch.equal(expected.state[k], saved[k]) for k in saved)


def test_rounds_are_not_evaluated(fedsa_run, fedavg_run):
    base, *rounds = fedsa_run.history
    assert base["round"] == 0 and base["eval"]["loss"] > 0  # round 0's base evaluation stays
    for record in rounds:
        assert record["eval"] is None
        assert record["aggregation"]["personalization"].startswith("not evaluated")
    assert all(r["eval"] is not None for r in fedavg_run.history)


class _MovesB(Strategy):
    """An inner strategy whose arithmetic moves B (a weighted mean that rounds)."""

    def aggregate_fit(self, server_round, global_state, updates):
        return {k: t + 1.0 for k, t in global_state.items()}, {"moved": 1.0}


def test_personalized_puts_b_back_and_does_not_evaluate(fedsa_run):
    cfg = fedsa_run.setup.server.cfg
    wrapped = Personalized(cfg, _MovesB(cfg))
    assert _MovesB(cfg).evaluates_global and not wrapped.evaluates_global
    start = fedsa_run.setup.server.initial_state()
    state, metrics = wrapped.aggregate_fit(1, start, [])
    assert metrics == {"moved": 1.0}
    for name, tensor in state.items():
        moved = not torch.equal(tensor, start[name])
        assert moved == (".lora_A." in name), name


def test_published_adapter_is_the_global_a_with_the_clients_b(fedsa_run):
    run = fedsa_run.run_dir
    record = json.loads((run / "personalize.json").read_text())
    own = _own_b(run)
    assert record["published"] == sorted(own) and record["not_published"]
    final = _checkpoint(run, ROUNDS)
    for client, b in own.items():
        published = load_adapter_state(run / "personal" / f"client-{client}")
        assert _equal(published, {k: b.get(k, t) for k, t in final.items()}), client
    for client in record["not_published"]:  # never trained: B_init is the base model
        assert not (run / "personal" / f"client-{client}").exists()


def test_mean_b_and_none_train_the_same_adapter(fedsa_run, fedsa_none_run):
    run, none = fedsa_run.run_dir, fedsa_none_run.run_dir
    for server_round in range(1, ROUNDS + 1):
        assert _equal(_checkpoint(run, server_round), _checkpoint(none, server_round))
    own, own_none = _own_b(run), _own_b(none)
    assert own.keys() == own_none.keys()
    assert all(_equal(own[c], own_none[c]) for c in own)
    final = _checkpoint(run, ROUNDS)
    # none: no B left a client, global_adapter is (A, B_init), no score
    record = json.loads((none / "personalize.json").read_text())
    assert record["global"]["b"] == "init" and record["global"]["eval"] is None
    assert _equal(load_adapter_state(none / "global_adapter"), final)
    assert "FedSA global: none" in (none / "report.md").read_text()
    # mean_b: B is the example-weighted mean of the clients' B, scored once
    record = json.loads((run / "personalize.json").read_text())
    assert record["global"]["clients"] == sorted(own) and record["global"]["weights"] == "examples"
    sizes = {c: len(fedsa_run.setup.client_data[c]) for c in own}
    reference = load_adapter_state(run / "global_adapter")
    for name, tensor in reference.items():
        if ".lora_B." in name:
            expected = sum(sizes[c] * own[c][name] for c in own) / sum(sizes.values())
            torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-9)
        else:
            assert torch.equal(tensor, final[name]), name
    score = record["global"]["eval"]["loss"]
    assert score > 0 and score != fedsa_run.history[0]["eval"]["loss"]
    report = (run / "report.md").read_text()
    assert "FedSA global (A, mean B), reference only" in report and f"{score:.3f}" in report
    # the reports cost bytes once, at close: the closing round's upload, not the rounds'
    assert record["bytes_up"] > json.loads((none / "personalize.json").read_text())["bytes_up"]


def test_under_client_dp_auto_reports_no_b(tiny_model_dir, tmp_path):
    dp = ("privacy.level=client", "privacy.noise_multiplier=0.5", "privacy.clip_norm=0.1")
    run = _run(tiny_model_dir, tmp_path / "run", *FEDSA, *dp).run_dir
    record = json.loads((run / "personalize.json").read_text())
    assert record["global"]["b"] == "init" and "fedsa_global=auto" in record["global"]["why"]
    assert record["published"] and record["bytes_up"] < 2_000 * 4  # headers, no B
    assert _equal(load_adapter_state(run / "global_adapter"), _checkpoint(run, ROUNDS))


def test_mean_b_weighs_by_examples_or_uniformly():
    first, second = {"b": torch.tensor([1.0, 0.0])}, {"b": torch.tensor([4.0, 3.0])}
    weighted, how = mean_b([(first, 1), (second, 2)])
    assert how == "examples" and torch.equal(weighted["b"], torch.tensor([3.0, 2.0]))
    uniform, how = mean_b([(first, 0), (second, 0)])  # DP strips the counts
    assert how == "uniform" and torch.equal(uniform["b"], torch.tensor([2.5, 1.5]))


@pytest.mark.parametrize(
    ("private", "fedsa_global", "reports"),
    [(False, "auto", True), (True, "auto", False), (True, "none", False), (False, "none", False)],
)
def test_auto_reports_b_only_where_nothing_is_private(private, fedsa_global, reports):
    config = PersonalizationConfig(method="fedsa", fedsa_global=fedsa_global)
    assert config.reports_b(private) is reports


WITH = "not with personalization.method=fedsa;"
REFUSALS = {
    "exact": (("strategy.name=exact",), f"strategy.name=exact: {WITH}"),
    "client_ranks": (("lora.client_ranks=[16,16,16,8]",), f"lora.client_ranks: {WITH}"),
    "ffa_lora": (("strategy.name=ffa_lora",), f"strategy.name=ffa_lora: {WITH}"),
    "scaffold": (("strategy.name=scaffold",), f"strategy.name=scaffold: {WITH}"),
    "fedbuff": (
        ("strategy.name=fedbuff", "federation.system.profiles=sampled"),
        f"strategy.name=fedbuff: {WITH}",
    ),
    **{
        method: (
            (f"robust.method={method}", "federation.num_clients=6", "federation.fraction_fit=1"),
            f"robust.method={method}: {WITH}",
        )
        for method in ("krum", "multi_krum", "norm_bound", "geometric_median")
    },
    "mean_b x client DP": (
        ("personalization.fedsa_global=mean_b", "privacy.level=client"),
        "personalization.fedsa_global=mean_b: not with privacy.level=client",
    ),
    "mean_b x secure aggregation": (
        (
            "personalization.fedsa_global=mean_b",
            "privacy.secure_aggregation=true",
            "engine=flower-simulation",
            "federation.fraction_fit=1",
        ),
        "personalization.fedsa_global=mean_b: not with privacy.secure_aggregation",
    ),
}


@pytest.mark.parametrize(("extra", "expected"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_exit_2_with_one_line(extra, expected, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    if "privacy.level=client" in extra:
        extra = (*extra, "privacy.noise_multiplier=1.0")
    assert main(["run", *tiny_args(tiny_model_dir, out, *FEDSA, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {expected}" in err, err
    assert not out.exists()


def _same_result(run: Path, full: Path) -> None:
    """``run`` ended exactly as ``full``: adapter, every client's B, published models."""
    assert _equal(_checkpoint(run, ROUNDS), _checkpoint(full, ROUNDS))
    own, own_full = _own_b(run), _own_b(full)
    assert own.keys() == own_full.keys() and all(_equal(own[c], own_full[c]) for c in own)
    for client in own:
        path = Path("personal") / f"client-{client}"
        assert _equal(load_adapter_state(run / path), load_adapter_state(full / path))
    global_adapter = (load_adapter_state(r / "global_adapter") for r in (run, full))
    assert _equal(*global_adapter)


def test_client_state_survives_a_resume_from_round_1(fedsa_run, tmp_path):
    """As if the run died after round 2's clients saved their B: round 2 has no marker. The
    replay must read each client's B of round 1, not the stale one of round 2."""
    run = tmp_path / "run"
    shutil.copytree(fedsa_run.run_dir, run)
    (run / "checkpoints" / "round_002" / "round.json").unlink()
    (run / "personalize.json").unlink()
    shutil.rmtree(run / "personal")
    stale = sorted((run / "clients").glob("*/state-a001-r0002.safetensors"))
    assert stale  # round 2's clients saved before the "crash"
    cfg = fedsa_run.setup.server.cfg
    args = tiny_args(Path(cfg.model.name), run, *FEDSA, "resume=true")
    run_experiment(load_config(QUICKSTART, args))
    assert json.loads((run / RUN_FILE).read_text())["attempts"] == [1, 2]
    assert not any(path.exists() for path in stale)  # replaced by attempt 2's
    _same_result(run, fedsa_run.run_dir)


@pytest.mark.slow
def test_client_state_survives_a_sigkill_and_resume(fedsa_run, tiny_model_dir, tmp_path):
    killed = tmp_path / "killed"
    args = tiny_args(tiny_model_dir, killed, *FEDSA)
    child = multiprocessing.get_context("spawn").Process(
        target=run_until_killed, args=(str(QUICKSTART), args, 2)
    )
    child.start()
    child.join(timeout=300)
    assert child.exitcode == -signal.SIGKILL
    first = _selected(fedsa_run)[2][0]  # saved its B in round 2, which never completed
    assert (killed / "clients" / str(first) / "state-a001-r0002.safetensors").is_file()
    assert not (killed / "checkpoints" / "round_002" / "round.json").exists()

    run_experiment(load_config(QUICKSTART, [*args, "resume=true"]))
    assert json.loads((killed / RUN_FILE).read_text())["attempts"] == [1, 2]
    _same_result(killed, fedsa_run.run_dir)
