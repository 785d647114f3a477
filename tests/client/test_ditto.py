"""Ditto (``client.ditto``): the personal adapter follows λ/2‖v − w_t‖² + F_k(v), only w is sent,
both runs share one state file with SCAFFOLD, and the closing round publishes the last v_k."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedit.cli.main import main
from fedit.client.ditto import personal_seed
from fedit.client.fit import fit_client
from fedit.client.state import DITTO_PERSONAL, SCAFFOLD_CONTROL, ClientStateStore, Stamp
from fedit.client.train import train_local
from fedit.config import Config, LoraConfig, ModelConfig, TrainConfig, load_config
from fedit.data.templates import tokenize_examples
from fedit.experiment import run_experiment
from fedit.model import apply_lora, get_adapter_state, load_model
from fedit.model.lora import load_adapter_state
from fedit.types import CONTROL_DELTA, FitConfig, FitInstruction, prefixed, unprefixed
from helpers import tiny_args

EXAMPLES = [
    {"instruction": f"What is {a} + {b}?", "input": "", "output": str(a + b), "category": "math"}
    for a, b in [(1, 2), (30, 12), (7, 8), (40, 2), (5, 5), (9, 90)]
]
TRAIN = TrainConfig(local_steps=3, batch_size=2, micro_batch_size=2, autocast="none")
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)
CFG = Config(lora=LORA, train=TRAIN, seed=0)
RUN_ID = "0123456789abcdef0123456789abcdef"
LR = 5e-2


@pytest.fixture
def setup(tiny_model_dir: Path):
    model, tokenizer = load_model(ModelConfig(name=str(tiny_model_dir), device="cpu"))
    model = apply_lora(model, LORA, seed=0)
    tokenized, _ = tokenize_examples(EXAMPLES, tokenizer, "alpaca", cutoff_len=128)
    # w_t: B off its zero init, so that A gets gradient in every run below.
    start = {k: (v + 0.05 if ".lora_B." in k else v) for k, v in get_adapter_state(model).items()}
    return model, tokenized, start


def _ditto(start, server_round: int = 1, extras=None, **config) -> FitInstruction:
    """A ditto instruction of ``server_round``, stamped as the loop stamps it."""
    fields = {"lr": LR, "rank": LORA.r, "seed": 1, "personalization": "ditto", **config}
    stamped = Stamp(RUN_ID, (1,), server_round).stamped(FitConfig(**fields))
    return FitInstruction(0, start, stamped, extras or {})


def _kept(store: ClientStateStore, namespace: str, server_round: int):
    """What the client reads in ``server_round``: the state saved before it."""
    return unprefixed(namespace, store.load(0, Stamp(RUN_ID, (1,), server_round)))


def _equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _distance(a, b) -> float:
    return sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5


def _v_k(start):
    """A personal adapter some way from w_t, as an earlier round would have left it."""
    generator = torch.Generator().manual_seed(0)
    return {k: v + 0.05 * torch.randn(v.shape, generator=generator) for k, v in start.items()}


def test_with_lam_zero_the_personal_run_is_train_local_from_v_k(setup, tmp_path):
    model, examples, start = setup
    v_k = _v_k(start)
    store = ClientStateStore.for_run(tmp_path)
    store.save(0, Stamp(RUN_ID, (1,), 1), prefixed(DITTO_PERSONAL, v_k))
    update = fit_client(model, examples, CFG, _ditto(start, 2, lam=0.0), store=store)
    assert personal_seed(1) != 1
    expected = train_local(
        model, examples, TRAIN, client_id=0, lr=LR, seed=personal_seed(1), global_state=v_k
    )
    personal = _kept(store, DITTO_PERSONAL, 3)
    assert _equal(personal, expected.state)
    assert update.metrics["personal_train_loss"] == expected.train_loss
    assert not _equal(personal, update.state)  # it did not train from w_t


def test_a_large_lam_holds_the_personal_adapter_at_the_received_global_one(setup, tmp_path):
    model, examples, start = setup
    v_k = _v_k(start)
    distances = {}
    for lam in (0.0, 1e4):
        store = ClientStateStore.for_run(tmp_path / str(lam))
        store.save(0, Stamp(RUN_ID, (1,), 1), prefixed(DITTO_PERSONAL, v_k))
        # AdamW moves each coordinate by about lr per step, so give the pull steps to get back.
        fit_client(model, examples, CFG, _ditto(start, 2, lam=lam, personal_steps=24), store=store)
        distances[lam] = _distance(_kept(store, DITTO_PERSONAL, 3), start)
    # Anchored at v_k instead of w_t, v would stay about ‖v_k − w_t‖ ≈ 2.2 away.
    assert distances[1e4] < 0.05 * distances[0.0], distances


def test_only_the_global_run_is_sent(setup, tmp_path):
    model, examples, start = setup
    plain = fit_client(model, examples, CFG, FitInstruction(0, start, FitConfig(LR, LORA.r, 1)))
    store = ClientStateStore.for_run(tmp_path)
    update = fit_client(model, examples, CFG, _ditto(start, lam=0.1), store=store)
    assert _equal(update.state, plain.state)
    assert (update.train_loss, update.num_steps) == (plain.train_loss, plain.num_steps)
    assert _equal(get_adapter_state(model), plain.state)  # the slot is left as FedIT leaves it
    personal = _kept(store, DITTO_PERSONAL, 2)
    assert not _equal(personal, plain.state) and not _equal(personal, start)

    private = {"dp_level": "client", "dp_clip_norm": 1.0, "lam": 0.1}
    store = ClientStateStore.for_run(tmp_path / "private")
    update = fit_client(model, examples, CFG, _ditto(start, **private), store=store)
    assert "personal_train_loss" not in update.metrics
    assert _equal(_kept(store, DITTO_PERSONAL, 2), personal)  # raw, never the noised reply


def test_the_step_callback_runs_on_through_the_personal_run(setup, tmp_path):
    model, examples, start = setup
    steps: list[tuple[int, int]] = []
    store = ClientStateStore.for_run(tmp_path)
    fit_client(
        model,
        examples,
        CFG,
        _ditto(start, lam=0.1, personal_steps=2),
        lambda step, total, loss: steps.append((step, total)),
        store=store,
    )
    # the global run's 3 steps, then the personal run's 2 counted on from there
    assert steps == [(1, 3), (2, 3), (3, 3), (4, 5), (5, 5)]


def test_ditto_with_scaffold_keeps_both_in_one_file(setup, tmp_path):
    model, examples, start = setup
    server = {"server_control": {k: torch.full_like(v, 1e-3) for k, v in start.items()}}
    runs = {
        "both": {"scaffold": True, "lam": 0.1},
        "scaffold": {"scaffold": True, "personalization": "none"},
        "ditto": {"lam": 0.1},
    }
    stores = {}
    for name, config in runs.items():
        stores[name] = ClientStateStore.for_run(tmp_path / name)
        extras = server if config.get("scaffold") else None
        update = fit_client(
            model, examples, CFG, _ditto(start, 1, extras, **config), store=stores[name]
        )
        if name == "both":
            delta = update.extras[CONTROL_DELTA]
    both = stores["both"]
    [file] = both.folder(0).iterdir()
    keys = set(both.load(0, Stamp(RUN_ID, (1,), 2)))
    assert keys == {f"{ns}/{k}" for ns in (SCAFFOLD_CONTROL, DITTO_PERSONAL) for k in start}, file
    # c_i comes from the global run and v from the personal one, as each alone would give them.
    for namespace, alone in ((SCAFFOLD_CONTROL, "scaffold"), (DITTO_PERSONAL, "ditto")):
        assert _equal(_kept(both, namespace, 2), _kept(stores[alone], namespace, 2)), namespace
    assert _equal(_kept(both, SCAFFOLD_CONTROL, 2), delta)  # c_i⁺ = 0 + Δc_i


def test_the_close_publishes_nothing_for_a_client_that_never_trained(setup, tmp_path):
    model, examples, start = setup
    store = ClientStateStore.for_run(tmp_path)
    close = _ditto(start, 3, phase="close", shared="none")
    assert fit_client(model, examples, CFG, close, store=store).metrics["published"] == 0.0
    assert not store.personal_folder(0).exists()


QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
CLIENTS = 4
ROUNDS = 2
ARGS = (
    "eval.generate=false",
    "data.synthetic.num_examples=60",
    f"federation.num_clients={CLIENTS}",
    f"federation.rounds={ROUNDS}",
)
DITTO = ("personalization.method=ditto", "personalization.personal_steps=3")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """A FedIT run and the same run with ditto."""
    out = tmp_path_factory.mktemp("ditto")
    fedit = run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, out / "fedit", *ARGS)))
    ditto = load_config(QUICKSTART, tiny_args(tiny_model_dir, out / "ditto", *ARGS, *DITTO))
    return fedit, run_experiment(ditto)


def test_a_ditto_run_trains_fedits_global_adapter(runs):
    fedit, ditto = runs
    final = load_adapter_state(ditto.run_dir / "global_adapter")
    assert _equal(final, load_adapter_state(fedit.run_dir / "global_adapter"))
    rounds = {name: _rounds(run.run_dir) for name, run in (("fedit", fedit), ("ditto", ditto))}
    for fedit_round, ditto_round in zip(rounds["fedit"], rounds["ditto"], strict=True):
        assert ditto_round["train_loss"] == fedit_round["train_loss"]  # the global runs' losses
        for metrics in ditto_round["client_metrics"].values():
            assert metrics["personal_train_loss"] > 0


def _rounds(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("client_metrics")]


def test_each_client_publishes_its_last_personal_adapter(runs):
    _, ditto = runs
    run = ditto.run_dir
    record = json.loads((run / "personalize.json").read_text())
    identity = json.loads((run / "run.json").read_text())
    stamp = Stamp(identity["run_id"], tuple(identity["attempts"]), ROUNDS + 1)
    store = ClientStateStore.for_run(run)
    trained = store.clients()
    assert record["method"] == "ditto" and record["published"] == trained
    assert record["not_published"] == sorted(set(range(CLIENTS)) - set(trained))
    final = load_adapter_state(run / "global_adapter")
    for client in trained:
        v_k = unprefixed(DITTO_PERSONAL, store.load(client, stamp))
        published = load_adapter_state(run / "personal" / f"client-{client}")
        assert _equal(published, v_k), client
        assert not _equal(published, final)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ("privacy.level=example",),
            "privacy.level=example: not with personalization.method=ditto",
        ),
        (
            ("strategy.name=fedbuff",),
            "strategy.name=fedbuff: not with personalization.method=ditto",
        ),
    ],
    ids=["example-level DP", "fedbuff"],
)
def test_refusals_exit_2_with_one_line(extra, expected, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *tiny_args(tiny_model_dir, out, *ARGS, *DITTO, *extra)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()
