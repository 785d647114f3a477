"""The round loop with a stand-in engine: checkpoints, metrics, resume, lr schedule, replies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fedit.config import ConfigError, load_config
from fedit.server.checkpoint import RunDir
from fedit.server.loop import RoundFailedError, enough_replies, round_lr, run_rounds
from fedit.strategy import build_strategy
from fedit.strategy.selection import Selection
from fedit.types import AdapterState, ClientUpdate, FitConfig, FitInstruction, RoundResult


class ArithmeticEngine:
    """Transport and server model at once: each client moves the adapter toward its own target,
    with seeded noise."""

    def __init__(self, num_clients: int, seed: int, fail_in_round: int | None = None):
        self.num_clients = num_clients
        self.seed = seed
        self.fail_in_round = fail_in_round
        self.evaluated: list[bool] = []

    def initial_state(self) -> AdapterState:
        return {"lora_A": torch.zeros(2, 3), "lora_B": torch.zeros(3, 2)}

    @property
    def client_sizes(self) -> list[int]:
        return [cid + 1 for cid in range(self.num_clients)]

    def fit(self, instructions, server_round):
        if server_round == self.fail_in_round:
            raise RuntimeError("simulated crash")
        updates = []
        for instruction in instructions:
            cid, lr = instruction.client_id, instruction.config.lr
            gen = torch.Generator().manual_seed(instruction.config.seed)
            state = {
                k: v + lr * (cid + 1) + 0.01 * torch.randn(v.shape, generator=gen)
                for k, v in instruction.state.items()
            }
            updates.append(
                ClientUpdate(
                    cid, state, num_examples=cid + 1, train_loss=1.0 / (cid + 1), num_steps=1
                )
            )
        return updates

    def evaluate(self, state, generate=True):
        self.evaluated.append(state is None)
        accuracy = {"accuracy": 0.0 if state is None else 0.5} if generate else {}
        if state is None:
            return {"loss": 2.0, **accuracy}
        return {"loss": float(state["lora_A"].abs().mean()), **accuracy}

    def save_adapter(self, state, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path / "adapter_model.safetensors"))

    def load_adapter(self, path: Path):
        return load_file(str(path / "adapter_model.safetensors"))


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "federation.num_clients=5",
            "federation.rounds=4",
            "federation.fraction_fit=0.4",
            "train.lr=0.1",
            *extra,
        ],
    )


def _start(cfg) -> RunDir:
    run_dir = RunDir(cfg.output_dir)
    run_dir.start(cfg, {"clients": []}, overwrite=False)
    return run_dir


def test_rounds_write_checkpoints_and_metrics(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = _start(cfg)
    engine = ArithmeticEngine(5, cfg.seed)
    state, history = run_rounds(cfg, engine, engine, build_strategy(cfg), run_dir)
    assert [r["round"] for r in history] == [0, 1, 2, 3, 4]
    assert engine.evaluated[0] is True  # base model scored before round 1
    lines = (run_dir.path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5
    first = json.loads(lines[1])
    assert len(first["selected_clients"]) == 2  # max(int(0.4 * 5), 1)
    assert set(first["seconds"]) == {"fit", "aggregate", "eval"}
    for server_round in range(1, 5):
        assert (run_dir.round_dir(server_round) / "round.json").is_file()
    torch.testing.assert_close(state, engine.load_adapter(run_dir.round_dir(4)))


def test_resume_matches_uninterrupted(tmp_path):
    cfg = _cfg(tmp_path)
    engine = ArithmeticEngine(5, cfg.seed)
    full_state, full_history = run_rounds(cfg, engine, engine, build_strategy(cfg), _start(cfg))

    crashed = _cfg(tmp_path / "b")
    run_dir = _start(crashed)
    failing = ArithmeticEngine(5, crashed.seed, fail_in_round=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_rounds(crashed, failing, failing, build_strategy(crashed), run_dir)
    assert [r["round"] for r in run_dir.resume_point().history] == [0, 1, 2]

    resumed_cfg = _cfg(tmp_path / "b", "resume=true")
    run_dir.check_resumable(resumed_cfg)
    engine = ArithmeticEngine(5, crashed.seed)
    state, history = run_rounds(resumed_cfg, engine, engine, build_strategy(resumed_cfg), run_dir)
    assert engine.evaluated == [False, False]  # rounds 3 and 4 only; base not re-scored
    torch.testing.assert_close(state, full_state)
    assert [r.get("selected_clients") for r in history] == [
        r.get("selected_clients") for r in full_history
    ]


class RecordingEngine(ArithmeticEngine):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configs: list[FitConfig] = []

    def fit(self, instructions, server_round):
        self.configs += [i.config for i in instructions]
        return super().fit(instructions, server_round)


def test_a_run_that_keeps_client_state_stamps_each_attempt(tmp_path, monkeypatch):
    monkeypatch.setattr("fedit.server.loop.keeps_client_state", lambda cfg: True)
    cfg = _cfg(tmp_path)
    run_dir = _start(cfg)
    run_id = json.loads((run_dir.path / "run.json").read_text())["run_id"]
    failing = RecordingEngine(5, cfg.seed, fail_in_round=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_rounds(cfg, failing, failing, build_strategy(cfg), run_dir)
    resumed = RecordingEngine(5, cfg.seed)
    resumed_cfg = _cfg(tmp_path, "resume=true")
    run_rounds(resumed_cfg, resumed, resumed, build_strategy(resumed_cfg), run_dir)
    stamps = {(c.server_round, c.state_attempts) for c in failing.configs + resumed.configs}
    assert stamps == {(1, "1"), (2, "1"), (3, "1"), (3, "1,3"), (4, "1,3")}
    assert {c.state_run for c in failing.configs + resumed.configs} == {run_id}


def test_a_run_without_client_state_is_not_stamped(tmp_path):
    cfg = _cfg(tmp_path, "federation.rounds=1")
    engine = RecordingEngine(5, cfg.seed)
    run_rounds(cfg, engine, engine, build_strategy(cfg), _start(cfg))
    assert {(c.server_round, c.state_run) for c in engine.configs} == {(0, "")}


def test_incomplete_round_is_ignored(tmp_path):
    cfg = _cfg(tmp_path, "federation.rounds=2")
    run_dir = _start(cfg)
    engine = ArithmeticEngine(5, cfg.seed)
    run_rounds(cfg, engine, engine, build_strategy(cfg), run_dir)
    (run_dir.round_dir(2) / "round.json").unlink()  # as if it crashed while saving round 2
    point = run_dir.resume_point()
    assert point.next_round == 2 and point.adapter_dir == run_dir.round_dir(1)


def test_resume_checks(tmp_path):
    cfg = _cfg(tmp_path, "resume=true")
    with pytest.raises(ConfigError, match="is not a fedit run"):
        RunDir(tmp_path).check_resumable(cfg)
    _start(_cfg(tmp_path))
    with pytest.raises(ConfigError, match=r"train.lr \(0.1 -> 0.2\)"):
        RunDir(cfg.output_dir).check_resumable(_cfg(tmp_path, "resume=true", "train.lr=0.2"))
    RunDir(cfg.output_dir).check_resumable(_cfg(tmp_path, "resume=true", "federation.rounds=9"))


def test_resume_counts_a_key_the_saved_run_lacks_at_its_default(tmp_path):
    """A run saved before a setting existed resumes at that setting's default, not past it."""
    cfg = _cfg(tmp_path)
    run_dir = _start(cfg)
    saved = yaml.safe_load((run_dir.path / "config.yaml").read_text(encoding="utf-8"))
    del saved["flower"]["rejoin_timeout"]  # as written by a fedit that had no such key
    (run_dir.path / "config.yaml").write_text(yaml.safe_dump(saved), encoding="utf-8")
    run_dir.check_resumable(_cfg(tmp_path, "resume=true"))
    with pytest.raises(ConfigError, match=r"flower.rejoin_timeout \(120.0 -> 5.0\)"):
        run_dir.check_resumable(_cfg(tmp_path, "resume=true", "flower.rejoin_timeout=5"))


def test_fresh_run_refuses_to_mix(tmp_path):
    cfg = _cfg(tmp_path)
    _start(cfg)
    with pytest.raises(ConfigError, match="already holds a run"):
        RunDir(cfg.output_dir).check_fresh(overwrite=False)
    RunDir(cfg.output_dir).check_fresh(overwrite=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not a fedit run"):
        RunDir(other).check_fresh(overwrite=True)


def test_cosine_schedule(tmp_path):
    cfg = _cfg(tmp_path, "train.lr_schedule=cosine", "train.lr_min=0.01")
    lrs = [round_lr(cfg, r) for r in range(1, 5)]
    assert lrs[0] == pytest.approx(0.1)
    # t/T = 2/4 -> halfway between lr and lr_min
    assert lrs[2] == pytest.approx(0.055)
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] > 0.01
    assert round_lr(_cfg(tmp_path), 3) == pytest.approx(0.1)


def test_every_key_of_a_round_record_is_a_round_result_field(tmp_path):
    cfg = _cfg(tmp_path, "federation.rounds=1")
    engine = ArithmeticEngine(5, cfg.seed)
    _, history = run_rounds(cfg, engine, engine, build_strategy(cfg), _start(cfg))
    fields = set(RoundResult.__dataclass_fields__)
    # ``system`` is written only with federation.system profiles (the simulated clock)
    assert set(history[1]) == fields - {"system"}
    assert list(history[1]["client_metrics"]) == [str(c) for c in history[1]["selected_clients"]]


def _round(selected, dropped, answered, min_fit=2):
    cfg = load_config(None, ["federation.num_clients=5", f"federation.min_fit_clients={min_fit}"])
    selection = Selection(selected, dropped)
    config = FitConfig(lr=0.1, rank=16, seed=0)
    instructions = [FitInstruction(c, {}, config) for c in selection.participants]
    updates = [ClientUpdate(c, {}, 1, 0.0, 1) for c in answered]
    return cfg, selection, instructions, updates


def test_enough_replies_aggregates_and_names_clients_that_failed(caplog):
    cfg, selection, instructions, updates = _round([0, 1, 2], [], [0, 2])
    assert enough_replies(cfg, 4, selection, instructions, [u.client_id for u in updates])
    assert "round 4: going on without clients [1]" in caplog.text


def test_too_few_replies_because_clients_failed_stops_the_run():
    cfg, selection, instructions, updates = _round([0, 1, 2], [], [0], min_fit=2)
    with pytest.raises(RoundFailedError, match=r"no usable reply from clients \[1, 2\]"):
        enough_replies(cfg, 4, selection, instructions, [u.client_id for u in updates])


def test_too_few_replies_because_clients_went_offline_skips_the_round(caplog):
    cfg, selection, instructions, updates = _round([0, 1, 2], [1, 2], [0], min_fit=2)
    assert not enough_replies(cfg, 4, selection, instructions, [u.client_id for u in updates])
    assert "global adapter unchanged" in caplog.text


@pytest.mark.parametrize(
    ("every", "generated"), [(1, [0, 1, 2, 3, 4]), (3, [0, 3, 4]), (0, [0, 4])]
)
def test_generation_every_k_rounds_and_always_at_the_ends(tmp_path, every, generated):
    """Loss at every evaluation; accuracy at the start, every k-th round and the last round."""
    cfg = _cfg(tmp_path, f"eval.generate_every={every}")
    engine = ArithmeticEngine(5, cfg.seed)
    _, history = run_rounds(cfg, engine, engine, build_strategy(cfg), _start(cfg))
    assert all("loss" in r["eval"] for r in history)
    assert [r["round"] for r in history if "accuracy" in r["eval"]] == generated
