"""FedBuff end to end on the tiny Llama: FedAvg's special case, exact resume, refusals."""

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
FAST = ("eval.generate=false", "data.synthetic.num_examples=80", "eval.every=100")
FEDBUFF = ("strategy.name=fedbuff", "federation.system.profiles=sampled")
# Measured on this machine's wall clock, so they differ between two runs of the same seed; the
# reply's size carries them in its header, so bytes_up and the upload time vary by a few bytes.
WALL_CLOCK = ("seconds", "tokens_per_second", "bytes_up")
SIMULATED = ("download", "compute")  # the clock's terms that do not depend on them


def _args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return tiny_args(model_dir, out, *FAST, *extra)


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def _rounds(run: Path) -> list[dict]:
    """metrics.jsonl without what the wall clock decides."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("seconds")
        record.get("communication", {}).pop("bytes_up", None)
        for metrics in record.get("client_metrics", {}).values():
            for key in WALL_CLOCK:
                metrics.pop(key, None)
        system = record.pop("system", {})
        for client, times in system.get("clients", {}).items():
            record[f"time of {client}"] = [times[key] for key in SIMULATED]
    return records


def test_fedbuff_without_staleness_is_fedavg(tiny_model_dir, tmp_path):
    # Two clients, both training at once, a buffer of both and η = 1: every update is fresh
    # (τ = 0, weight 1) and x + Σ(y_i − x)/2 is the mean; FedAvg weighs by size, equal here.
    common = (
        "federation.num_clients=2",
        "federation.fraction_fit=1.0",
        "data.partition.method=iid",
    )
    buffered = run_experiment(
        load_config(
            QUICKSTART,
            _args(
                tiny_model_dir,
                tmp_path / "fedbuff",
                *common,
                *FEDBUFF,
                "federation.concurrency=2",
                "strategy.buffer_size=2",
                "strategy.server_lr=1.0",
            ),
        )
    )
    synchronous = run_experiment(
        load_config(QUICKSTART, _args(tiny_model_dir, tmp_path / "fedavg", *common))
    )
    for record in buffered.history[1:]:
        assert record["aggregation"]["staleness"] == {"0": 2}
        assert len(set(record["num_examples"].values())) == 1  # equal sizes: FedAvg's weights
    fedavg = _adapter(synchronous.run_dir / "global_adapter")
    fedbuff = _adapter(buffered.run_dir / "global_adapter")
    assert any(not torch.equal(fedavg[k], buffered.setup.server.initial_state()[k]) for k in fedavg)
    torch.testing.assert_close(fedbuff, fedavg, rtol=0, atol=1e-6)


def test_fedbuff_resumes_bit_identically(tiny_model_dir, tmp_path):
    extra = (
        *FEDBUFF,
        "federation.rounds=3",
        "federation.concurrency=3",
        "strategy.buffer_size=2",
    )
    full = run_experiment(load_config(QUICKSTART, _args(tiny_model_dir, tmp_path / "full", *extra)))
    stale = [r["aggregation"]["staleness"] for r in full.history[1:]]
    assert any(set(histogram) != {"0"} for histogram in stale)  # stale updates were weighed
    crashed = _args(tiny_model_dir, tmp_path / "crashed", *extra)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_config(QUICKSTART, crashed), CrashInRound(3))
    waiting = json.loads((tmp_path / "crashed/checkpoints/round_002/inflight.json").read_text())
    assert waiting["waiting"]  # resumed with clients still training
    run_experiment(load_config(QUICKSTART, [*crashed, "resume=true"]))
    torch.testing.assert_close(
        _adapter(tmp_path / "crashed" / "global_adapter"),
        _adapter(full.run_dir / "global_adapter"),
        rtol=0,
        atol=0,
    )
    assert _rounds(tmp_path / "crashed") == _rounds(full.run_dir)
    elapsed = [r["system"]["elapsed"] for r in full.history[1:]]
    resumed = [json.loads(line) for line in (tmp_path / "crashed/metrics.jsonl").open()][1:]
    assert [r["system"]["elapsed"] for r in resumed] == pytest.approx(elapsed, rel=1e-5)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ((), "strategy.name=fedbuff: clients finish on the simulated clock"),
        (("privacy.level=client",), "privacy.level=client: not with strategy.name=fedbuff"),
        (("robust.method=median",), "robust.method=median: not with strategy.name=fedbuff"),
        (("federation.deadline=10",), "federation.deadline=10.0: not with strategy.name=fedbuff"),
        (("federation.selection=oort",), "federation.selection=oort: not with strategy.name="),
        (("strategy.buffer_size=5",), "strategy.buffer_size: must be in [1, federation.num"),
        (("strategy.staleness=linear",), "strategy.staleness: unknown value 'linear'"),
    ],
    ids=["no profiles", "dp", "defence", "deadline", "oort", "buffer", "staleness"],
)
def test_fedbuff_refusals_exit_2_with_one_line_and_write_nothing(
    overrides, expected, tiny_model_dir, tmp_path, capsys
):
    profiles = ("federation.system.profiles=sampled",) if overrides else ()
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "strategy.name=fedbuff", *profiles, *overrides)
    code = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists()
