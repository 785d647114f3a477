"""The in-process transport checks replies as the Flower one does, and the run reacts the same."""

from __future__ import annotations

import math
from pathlib import Path

from fedit.cli.main import main
from fedit.client import fit as fit_module
from fedit.engines import simulation
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


def _poisoning(bad_clients: set[int]):
    """fit_client, except that ``bad_clients`` reply with a NaN in their adapter."""
    real = fit_module.fit_client

    def fit_client(model, examples, cfg, instruction, progress=None, **site):
        update = real(model, examples, cfg, instruction, progress, **site)
        if instruction.client_id in bad_clients:
            name = sorted(update.state)[0]
            update.state[name] = update.state[name].clone().fill_(math.nan)
        return update

    return fit_client


def test_a_malformed_reply_in_process_is_refused_and_the_round_goes_on(
    tiny_model_dir, tmp_path, monkeypatch, caplog
):
    # Round 1 selects clients 1 and 3 of 4 with the tiny settings; client 3 replies NaN.
    monkeypatch.setattr(simulation, "fit_client", _poisoning({3}))
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "federation.rounds=1", "eval.generate=false")
    assert main(["run", QUICKSTART, *args]) == 0
    assert "client 3: malformed reply rejected" in caplog.text
    assert "going on without clients [3]" in caplog.text
    record = (out / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"train_loss": {"1"' in record and '"3":' not in record.split('"train_loss"')[1][:40]


def test_too_few_usable_replies_stop_the_run_with_one_line(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(simulation, "fit_client", _poisoning({0, 1, 2, 3}))
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "eval.generate=false")
    assert main(["run", QUICKSTART, *args]) == 1
    printed = capsys.readouterr().err
    assert "fedit: run failed: round 1: 0 valid replies" in printed
    assert "resume with resume=true" in printed
    assert not (out / "global_adapter").exists()


def test_a_site_floor_refuses_a_weaker_instruction_naming_the_client(
    tiny_model_dir, tmp_path, caplog, capsys
):
    # Every simulated site demands z >= 2; the server asks z = 1 with the noise at the clients.
    out = tmp_path / "run"
    args = tiny_args(
        tiny_model_dir,
        out,
        "federation.rounds=1",
        "eval.generate=false",
        "privacy.level=client",
        "privacy.noise_at=clients",
        "privacy.noise_multiplier=1.0",
        "privacy.site_min_noise_multiplier=2",
    )
    assert main(["run", QUICKSTART, *args]) == 1  # no site trains: the round fails
    assert "refused the instruction: its noise multiplier z=1 is below 2" in caplog.text
    assert "fedit: run failed: round 1: 0 valid replies" in capsys.readouterr().err
    # A floor the instruction meets: the same run trains.
    ok = tiny_args(
        tiny_model_dir,
        tmp_path / "ok",
        "federation.rounds=1",
        "eval.generate=false",
        "privacy.level=client",
        "privacy.noise_at=clients",
        "privacy.noise_multiplier=2.0",
        "privacy.site_min_noise_multiplier=2",
        "privacy.site_max_clip_norm=1.0",
    )
    assert main(["run", QUICKSTART, *ok]) == 0
