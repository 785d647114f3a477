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
from helpers import CrashInRound, tiny_args

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


def test_resume_reproduces_epsilon_clip_and_adapter_and_refuses_beyond_budget(
    tiny_model_dir, tmp_path, capsys
):
    run_experiment(load_config(QUICKSTART, tiny_args(tiny_model_dir, tmp_path / "full", *DP)))
    args = tiny_args(tiny_model_dir, tmp_path / "crashed", *DP)
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
    assert f"ε = {full[-1]['epsilon']:.3g} at δ = " in printed and "(client-level, RDP)" in printed
    report = (tmp_path / "full" / "report.md").read_text()
    assert "## Privacy" in report and "calibrated to ε = 8 over 3 rounds" in report

    code = main(["run", str(QUICKSTART), *args, "resume=true", "federation.rounds=5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "privacy.target_epsilon=8 covers 3 rounds" in err, err
    assert len(_privacy_records(tmp_path / "crashed")) == 3  # nothing was run or written
