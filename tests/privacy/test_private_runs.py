"""Private runs end to end on the tiny model: refusals, resume, the report and the ε line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli.main import main
from fedit.config import load_config
from fedit.experiment import run_experiment
from helpers import CrashInRound, check_nothing_per_client_in_the_clear, record_replies, tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

REFUSALS = {
    "scaffold": (["strategy.name=scaffold"], "strategy.name=scaffold: refused"),
    "exact": (["strategy.name=exact"], "strategy.name=exact: refused"),
    "ranks": (["strategy.name=exact", "lora.client_ranks=[4,8]"], "heterogeneous ranks"),
    "clip zero": (["privacy.clip_norm=0"], "privacy.clip_norm: must be > 0"),
    "clip negative": (["privacy.clip_norm=-1"], "privacy.clip_norm: must be > 0"),
    "weighted selection": (["federation.selection=weighted"], "federation.selection=weighted"),
    "pld without replacement": (["privacy.accountant=pld"], "only the RDP accountant"),
    "no noise": (["privacy.noise_multiplier=null"], "privacy.noise_multiplier: set it"),
    "robust defence": (["robust.method=geometric_median"], "strategy sees only the noised mean"),
}


@pytest.mark.parametrize("case", list(REFUSALS), ids=list(REFUSALS))
def test_refusals_exit_2_with_one_line(case, tiny_model_dir, tmp_path, capsys):
    overrides, expected = REFUSALS[case]
    out = tmp_path / "run"
    dp = ["privacy.level=client", "privacy.noise_multiplier=1.0"]
    code = main(["run", *tiny_args(tiny_model_dir, out), *dp, *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "global_adapter" / "adapter_model.safetensors"))


def _privacy_records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["privacy"] for line in lines if "privacy" in json.loads(line)]


DP = (
    "federation.rounds=3",
    "federation.selection=poisson",
    "federation.sample_rate=0.6",
    "privacy.level=client",
    "privacy.target_epsilon=8",
    "privacy.adaptive_clip=true",
    "privacy.count_noise_std=2.0",
    "privacy.clip_norm=0.05",
    "eval.generate=false",
)
REPRODUCIBLE = "privacy.reproducible_noise=true"


def test_resume_with_reproducible_noise_is_bit_identical_and_void_and_refuses_beyond_budget(
    tiny_model_dir, tmp_path, capsys
):
    dp = (*DP, REPRODUCIBLE)
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "full", *dp)))
    args = tiny_args(tiny_model_dir, tmp_path / "crashed", *dp)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(QUICKSTART, args), CrashInRound(3))
    capsys.readouterr()
    assert main(["run", str(QUICKSTART), *args, "resume=true"]) == 0
    printed = capsys.readouterr().out
    full, resumed = _privacy_records(tmp_path / "full"), _privacy_records(tmp_path / "crashed")
    assert len(full) == 3 and resumed == full  # ε, δ, z and the adapted clip, round by round
    assert full[-1]["epsilon"] == pytest.approx(8.0, abs=0.05)  # the budget is spent
    assert full[1]["clip_norm"] == full[0]["next_clip_norm"] != full[0]["clip_norm"]
    for name, tensor in _adapter(tmp_path / "full").items():
        assert torch.equal(tensor, _adapter(tmp_path / "crashed")[name]), name
    assert all("reproducible_noise" in r["void"] for r in full)
    assert "ε void: reproducible noise" in printed and "ε = " not in printed
    report = (tmp_path / "full" / "report.md").read_text()
    assert "## Privacy" in report and "calibrated to ε = 8 over 3 rounds" in report
    assert "ε void" in report

    code = main(["run", str(QUICKSTART), *args, "resume=true", "federation.rounds=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "privacy.target_epsilon=8 covers 3 rounds" in err, err
    assert len(_privacy_records(tmp_path / "crashed")) == 3  # nothing was run or written


def test_same_seed_gives_other_noise_and_resume_recomputes_the_same_epsilon(
    tiny_model_dir, tmp_path, capsys
):
    first, second = tmp_path / "first", tmp_path / "second"
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, first, *DP)))
    args = tiny_args(tiny_model_dir, second, *DP)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(QUICKSTART, args), CrashInRound(3))
    capsys.readouterr()
    assert main(["run", str(QUICKSTART), *args, "resume=true"]) == 0
    printed = capsys.readouterr().out
    # Same config, same seed: the noise is secret, so the adapters differ ...
    a, b = _adapter(first), _adapter(second)
    assert any(not torch.equal(a[name], b[name]) for name in a)
    # ... and ε, computed from the plan and the rounds done, is the same round by round.
    epsilons = [[r["epsilon"] for r in _privacy_records(run)] for run in (first, second)]
    assert epsilons[0] == epsilons[1] and len(epsilons[0]) == 3
    assert not any("void" in r for r in _privacy_records(first))
    assert (
        f"ε = {epsilons[0][-1]:.3g} at δ = 1e-05 (client-level, add/remove, RDP) against: "
        "another client and the public; not against the server (noise added at the server)"
    ) in printed


@pytest.mark.parametrize(
    ("level", "selection_private"),
    [
        (("privacy.level=client", "privacy.noise_at=clients"), True),
        (("privacy.level=example",), False),
    ],
    ids=["client-noise-at-clients", "example"],
)
def test_private_run_sends_and_writes_nothing_per_client(
    level, selection_private, tiny_model_dir, tmp_path, monkeypatch
):
    from fedit.engines import simulation

    replies = record_replies(monkeypatch, simulation)
    args = [
        *level,
        "privacy.noise_multiplier=1.0",
        "privacy.adaptive_clip=" + ("true" if selection_private else "false"),
        "privacy.count_noise_std=2.0",
        "train.objective=sft",
    ]
    run = tmp_path / "run"
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, run, *args)))
    check_nothing_per_client_in_the_clear(run, replies, selection_private)
    report = (run / "report.md").read_text()
    assert "| secret |" in report if selection_private else "| secret |" not in report
    assert ("byte counts would tell how many replied" in report) == selection_private


def test_nan_from_the_accountant_stops_the_run_before_anything_is_written(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from dp_accounting.rdp import RdpAccountant

    monkeypatch.setattr(RdpAccountant, "get_epsilon", lambda self, delta: float("nan"))
    out = tmp_path / "run"
    dp = ["privacy.level=client", "privacy.noise_multiplier=1.0"]
    assert main(["run", *tiny_args(tiny_model_dir, out), *dp]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("fedit: error:")]
    assert len(errors) == 1 and "returned ε=nan" in errors[0], err
    assert not out.exists()


def test_an_empty_poisson_round_releases_noise_instead_of_skipping(tiny_model_dir, tmp_path):
    # A sample rate so small that no client is drawn: the round still releases the noised
    # mean (the adapter moves by the noise alone) and is recorded like any other.
    run = tmp_path / "run"
    args = [
        "federation.rounds=1",
        "federation.selection=poisson",
        "federation.sample_rate=1e-9",
        "privacy.level=client",
        "privacy.noise_multiplier=1.0",
        "eval.generate=false",
    ]
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, run, *args)))
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][1:]
    assert "skipped" not in record["aggregation"] and "selected_clients" not in record
    assert record["privacy"]["epsilon"] >= 0
    released = load_file(str(run / "checkpoints" / "round_001" / "adapter_model.safetensors"))
    # LoRA's B starts at zero; with nobody drawn only the server's noise can have moved it.
    b_tensors = [t for name, t in released.items() if "lora_B" in name]
    assert b_tensors and all(t.abs().sum() > 0 for t in b_tensors)


def test_example_level_composes_with_a_defence(tiny_model_dir, tmp_path):
    # Each reply is the client's own DP-SGD output, so a defence judging it is post-processing:
    # allowed at example level (client level is refused above, where only the noised mean exists).
    run = tmp_path / "run"
    args = [
        "federation.rounds=1",
        "privacy.level=example",
        "privacy.noise_multiplier=1.0",
        "robust.method=median",
        "eval.generate=false",
    ]
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, run, *args)))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["aggregation"]["robust"]["method"] == "median"
    assert record["privacy"]["epsilon"] > 0
