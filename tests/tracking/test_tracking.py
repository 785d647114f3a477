"""``report_to``: what TensorBoard, MLflow and W&B hold after a tiny run, read back with their
own readers; a failing tracker costs a warning, never the run; DP keeps client losses out."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from fedit.cli.main import main
from fedit.config import ConfigError, load_config
from fedit.config.schema import TRACKERS
from fedit.io import read_jsonl
from fedit.tracking import session
from fedit.tracking.records import round_metrics
from fedit.tracking.tracker import RunIdentity, Tracker, model_identity
from fedit.tracking.wandb_tracker import WandbTracker
from helpers import tiny_args

QUICKSTART = "configs/quickstart.yaml"
WANDB_BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log of 32 KiB blocks


@pytest.fixture(autouse=True)
def offline_trackers(monkeypatch, tmp_path):
    """No tracker settings from the environment; W&B's own folders inside the test's."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


def _run(tiny_model_dir: Path, out: Path, *extra: str) -> int:
    return main(["run", QUICKSTART, *tiny_args(tiny_model_dir, out, "eval.generate=false", *extra)])


def _tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {
        tag: {event.step: event.value for event in events.Scalars(tag)}
        for tag in events.Tags()["scalars"]
    }


def _wandb_records(path: Path) -> list[Any]:
    """Every record of an offline run's ``.wandb`` file (W&B's protobuf ``Record``s in
    LevelDB log framing: 7-byte header, then per chunk crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, payload, records = 7, b"", []
    while position + 7 <= len(data):
        if WANDB_BLOCK - position % WANDB_BLOCK < 7:  # a block's tail too short for a header
            position += WANDB_BLOCK - position % WANDB_BLOCK
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]  # 1 full, 2 first, 3 middle, 4 last
        payload += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
            payload = b""
    return records


def _wandb_history(records: list[Any]) -> dict[str, dict[int, float]]:
    history: dict[str, dict[int, float]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                value = json.loads(item.value_json)
                if isinstance(value, (int, float)):
                    history.setdefault(key, {})[record.history.step.num] = value
    return history


def test_a_run_logs_every_round_to_each_tracker(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(tiny_model_dir, out, "report_to=[tensorboard,mlflow,wandb]") == 0
    history = read_jsonl(out / "metrics.jsonl")
    losses = {record["round"]: record["eval"]["loss"] for record in history}
    assert sorted(losses) == [0, 1, 2]
    client_losses: dict[str, dict[int, float]] = {}  # train_loss/client_K -> {round: loss}
    for record in history:
        for client, loss in record.get("train_loss", {}).items():
            client_losses.setdefault(f"train_loss/client_{client}", {})[record["round"]] = loss
    assert client_losses

    scalars = _tensorboard_scalars(out / "tensorboard")
    assert scalars["eval/loss"] == pytest.approx(losses, rel=1e-6)  # float32 events
    for key, by_round in client_losses.items():
        assert scalars[key] == pytest.approx(by_round, rel=1e-6)
    assert set(scalars["communication/bytes_up"]) == {1, 2}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fedit")
    (run,) = client.search_runs([experiment.experiment_id])
    logged = client.get_metric_history(run.info.run_id, "eval/loss")
    assert {m.step: m.value for m in logged} == pytest.approx(losses)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["federation.rounds"] == "2"
    assert run.data.params["report_to"] == "['tensorboard', 'mlflow', 'wandb']"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report", "global_adapter", "results.json"} <= artifacts
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/loss.png"} <= report
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "global_adapter")}
    assert "global_adapter/adapter_model.safetensors" in adapter

    (wandb_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(wandb_file)
    assert _wandb_history(records)["eval/loss"] == pytest.approx(losses)
    (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert run_record.display_name == "run" and config["federation.rounds"] == 2
    assert (wandb_file.parent / "files" / "report" / "report.md").is_file()


class Recording(Tracker):
    """What a tracker is given, kept in memory."""

    runs: list[Recording] = []

    def start(self, identity: RunIdentity, params: dict[str, Any]) -> None:
        self.identity, self.params, self.metrics = identity, params, {}
        self.tables: list[Any] = []
        self.closed = None
        Recording.runs.append(self)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, {})[step] = value

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.tables.append((name, columns, rows))

    def log_files(self, files: list[Path], folder: str) -> None:
        pass

    def close(self, failed: bool) -> None:
        self.closed = "failed" if failed else "finished"


class FailsOnSecondRound(Recording):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == 2:
            raise OSError("disk full\nsecond line")
        super().log_metrics(metrics, step)


@pytest.fixture
def recording(monkeypatch):
    Recording.runs = []
    monkeypatch.setitem(session.TRACKERS, "tensorboard", Recording)
    return Recording.runs


def test_failing_trackers_cost_one_warning_each_and_the_run_completes(
    tiny_model_dir, tmp_path, monkeypatch, caplog, recording
):
    def refuse(self, identity, params):
        raise RuntimeError("wandb.init() timed out\nretry later")

    monkeypatch.setattr(WandbTracker, "start", refuse)
    monkeypatch.setitem(session.TRACKERS, "mlflow", FailsOnSecondRound)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fedit.tracking"):
        assert _run(tiny_model_dir, out, "report_to=[wandb,mlflow,tensorboard]") == 0
    assert (out / "global_adapter" / "adapter_model.safetensors").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("fedit.tracking")]
    assert warnings == [
        "report_to: wandb failed to start: RuntimeError: wandb.init() timed out",
        "report_to: mlflow failed while logging (OSError: disk full); the run goes on without it",
    ]
    flaky, working = recording
    assert sorted(flaky.metrics["eval/loss"]) == [0, 1] and flaky.closed == "failed"
    assert sorted(working.metrics["eval/loss"]) == [0, 1, 2] and working.closed == "finished"
    assert working.tables and working.tables[0][1][:2] == ["model", "loss"]


def test_a_missing_extra_names_it_and_the_run_goes_on(
    tiny_model_dir, tmp_path, monkeypatch, caplog, recording
):
    def not_installed(self, identity, params):
        raise ModuleNotFoundError("No module named 'wandb'", name="wandb")

    monkeypatch.setattr(WandbTracker, "start", not_installed)
    with caplog.at_level(logging.WARNING, logger="fedit.tracking"):
        code = _run(
            tiny_model_dir, tmp_path / "run", "federation.rounds=1", "report_to=[wandb,tensorboard]"
        )
    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.name.startswith("fedit.tracking")]
    assert "wandb is not installed (wandb); pip install fedit[track]" in warning
    assert sorted(recording[0].metrics["eval/loss"]) == [0, 1]


def test_client_level_dp_logs_no_client_training_loss(tiny_model_dir, tmp_path, recording):
    out = tmp_path / "run"
    dp = ("privacy.level=client", "privacy.noise_at=clients", "privacy.noise_multiplier=1.0")
    assert _run(tiny_model_dir, out, "federation.rounds=1", *dp, "report_to=[tensorboard]") == 0
    (run,) = recording
    history = read_jsonl(out / "metrics.jsonl")
    assert run.metrics["privacy/epsilon"] == {1: pytest.approx(history[1]["privacy"]["epsilon"])}
    assert run.metrics["eval/loss"].keys() == {0, 1}
    assert not [key for key in run.metrics if "train_loss" in key or "client_" in key]
    # Without DP the same run logs each client's loss: the check above can fail.
    Recording.runs.clear()
    open_run = ("federation.rounds=1", "report_to=[tensorboard]")
    assert _run(tiny_model_dir, tmp_path / "open", *open_run) == 0
    assert any(key.startswith("train_loss/client_") for key in Recording.runs[0].metrics)


def test_a_resumed_run_logs_the_finished_rounds_then_redoes_an_unfinished_one(
    tiny_model_dir, tmp_path, recording
):
    out = tmp_path / "run"
    assert _run(tiny_model_dir, out) == 0  # no tracker yet: report_to may change on resume
    (out / "checkpoints" / "round_002" / "round.json").unlink()  # round 2 crashed unmarked
    stale = read_jsonl(out / "metrics.jsonl")[2]
    assert _run(tiny_model_dir, out, "resume=true", "report_to=[tensorboard]") == 0
    (run,) = recording
    final = read_jsonl(out / "metrics.jsonl")
    assert final[2]["seconds"]["fit"] != stale["seconds"]["fit"]
    # Rounds 0 and 1 from metrics.jsonl, then round 2 as redone, not its stale record.
    fit = {record["round"]: record["seconds"]["fit"] for record in final[1:]}
    assert run.metrics["seconds/fit"] == fit
    assert sorted(run.metrics["eval/loss"]) == [0, 1, 2]


def test_an_unknown_tracker_is_one_line_exit_2_writing_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", QUICKSTART, f"output_dir={out}", "report_to=[tensorboard,neptune]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "fedit: error: report_to: unknown value 'neptune'; choose one of tensorboard, mlflow, wandb"
    )
    assert not out.exists()
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(None, ["report_to=[mlflow,mlflow]"])
    assert load_config(None, ["report_to=tensorboard"]).report_to == ["tensorboard"]


def test_the_config_names_every_tracker_there_is():
    assert set(TRACKERS) == set(session.TRACKERS)


def test_verdicts_quantization_epsilon_and_clock_are_logged_from_the_record():
    record = {
        "round": 3,
        "train_loss": {},
        "aggregation": {
            "attackers": [2],
            "robust": {
                "method": "krum",
                "scores": {"0": 1.5, "2": 9.0},
                "rejected": [2],
                "detection": {"true_positives": 1, "false_positives": 0},
            },
            "secure_aggregation": {"bits": 24, "clipping_range": 8.0, "clients": [0, 1, 2]},
        },
        "privacy": {"epsilon": 2.5, "delta": 1e-5, "level": "client"},
        "system": {"duration": 12.5, "late": [4]},
    }
    metrics = round_metrics(record)
    assert metrics["aggregation/robust/rejected"] == 1
    assert metrics["aggregation/robust/scores/2"] == 9.0
    assert metrics["aggregation/robust/detection/true_positives"] == 1
    assert metrics["aggregation/secure_aggregation/bits"] == 24
    assert metrics["aggregation/secure_aggregation/clients"] == 3
    assert metrics["privacy/epsilon"] == 2.5
    assert metrics["system/duration"] == 12.5 and metrics["system/late"] == 1
    assert not any(key.startswith("train_loss") for key in metrics)


def test_a_study_seed_is_its_own_run_in_the_study_group(tmp_path):
    study = tmp_path / "study"
    one = load_config(None, [f"output_dir={study / 'seed-3'}", "seed=3"])
    identity = model_identity(one, study, "local-1")
    assert (identity.name, identity.group, identity.folder) == (
        "local-1 seed 3",
        "study",
        "seed-3/local-1",
    )
    single = model_identity(load_config(None, [f"output_dir={study}"]), study, "fedit")
    assert (single.name, single.experiment, single.root) == ("fedit", "study", study)


def test_compare_logs_each_model_as_a_run_of_the_study(tiny_model_dir, tmp_path):
    out = tmp_path / "study"
    code = main(
        [
            "compare",
            QUICKSTART,
            *tiny_args(tiny_model_dir, out, "eval.generate=false", "federation.rounds=1"),
            "compare.num_local=1",
            "compare.centralized=false",
            "report_to=[tensorboard,wandb]",
        ]
    )
    assert code == 0
    models = json.loads((out / "compare" / "results.json").read_text())["models"]
    names = {model["name"] for model in models}
    assert {folder.name for folder in (out / "tensorboard").iterdir()} == names
    results = json.loads((out / "compare" / "results.json").read_text())["results"]
    for name in names:
        scalars = _tensorboard_scalars(out / "tensorboard" / name)
        assert scalars["compare/heldout/loss"] == {
            1: pytest.approx(results[name]["heldout"]["loss"], rel=1e-6)
        }
    fedit = _tensorboard_scalars(out / "tensorboard" / "fedit")
    assert set(fedit["eval/loss"]) == {0, 1}  # the federated run's rounds, in FedIT's run
    runs = {}  # W&B: one offline run per model, all in the study's group
    for wandb_file in (out / "wandb").glob("offline-run-*/run-*.wandb"):
        records = _wandb_records(wandb_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "study"
        runs[run.display_name] = _wandb_history(records)
    assert runs.keys() == names
    for name in names:  # after FedIT's rounds and results table: none dropped as out of order
        assert runs[name]["compare/heldout/loss"] == {
            1: pytest.approx(results[name]["heldout"]["loss"])
        }
    assert set(runs["fedit"]["eval/loss"]) == {0, 1}
