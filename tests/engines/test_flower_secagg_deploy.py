"""Secure aggregation across real processes: a SuperLink and SuperNodes on 127.0.0.1 with TLS
and site workers, and a SuperNode killed after key sharing. Each run is compared with the
same ClientApp driven in this process through the loopback Grid (``test_flower_secagg``)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from flower_support import Federation  # noqa: E402
from loopback import stage_of  # noqa: E402

from fedit.engines.flower_launch import write_certificates  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CLIENTS = 3
ONE_THREAD = {"num-threads": 1}
SECURE = (
    "privacy.secure_aggregation=true",
    "eval.generate=false",
    "eval.base=false",
    "data.synthetic.num_examples=100",
    f"federation.num_clients={CLIENTS}",
    "federation.fraction_fit=1.0",
    "federation.rounds=1",
    "flower.connect_timeout=120",
)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "global_adapter" / "adapter_model.safetensors"))


def _record(run: Path) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in rows if row["round"] == 1)


def _within_bound(expected: Path, got: Path, bound: float) -> None:
    local, remote = _adapter(expected), _adapter(got)
    largest = max(t.abs().max().item() for t in local.values())
    worst = max((local[k] - remote[k]).abs().max().item() for k in local)
    assert worst <= bound + 2 * float(np.finfo(np.float32).eps) * largest


@pytest.mark.slow  # ~80 s; the TLS path is the plain TLS test's, the ClientApp is the loopback's
def test_tls_deployment_with_site_workers_sums_securely(tiny_model_dir, tmp_path):
    certificates = write_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"], bits=2048)
    args = [f"model.name={tiny_model_dir}", *SECURE]
    with Federation(tmp_path, certificates) as federation:
        for client in range(CLIENTS):
            node = {**ONE_THREAD, "partition-id": client, "num-partitions": CLIENTS}
            federation.add_node(node, worker=True)
        result = federation.run(str(QUICKSTART), *args, f"output_dir={tmp_path / 'flower'}")
    assert (tmp_path / "flower" / "global_adapter").is_dir(), result.stdout + federation.logs()
    record = _record(tmp_path / "flower")
    secure = record["aggregation"]["secure_aggregation"]
    assert secure["clients"] == [0, 1, 2] and record["client_metrics"] == {}
    plain, _ = _plain(tiny_model_dir, tmp_path / "plain")
    _within_bound(plain, tmp_path / "flower", secure["error_bound"])


def _plain(model_dir: Path, out: Path, lost: int | None = None):
    """The same clients' plain FedAvg in this process (``lost`` never trains)."""
    from flwr.supercore.task_identity import TaskIdentity
    from loopback import LoopbackGrid

    from fedit.config import load_config
    from fedit.engines.flower import FlowerTransport
    from fedit.experiment import run_experiment

    extra = [a for a in SECURE if not a.startswith("privacy.")]
    cfg = load_config(
        QUICKSTART,
        [
            f"model.name={model_dir}",
            f"output_dir={out}",
            "engine=flower",
            "flower.insecure=true",
            "flower.reply_timeout=2",
            *extra,
        ],
    )

    def silent(client, message):
        return client == lost and stage_of(message) == "train"

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    try:
        grid = LoopbackGrid(cfg, CLIENTS, silent)
        return run_experiment(cfg, transport=FlowerTransport(cfg, grid)).run_dir, grid  # type: ignore[arg-type]
    finally:
        TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None


@pytest.mark.slow  # ~90 s; the loopback test runs the same recovery with the same ClientApp
def test_a_supernode_killed_after_key_sharing_is_recovered(tiny_model_dir, tmp_path):
    out = tmp_path / "flower"
    args = [f"model.name={tiny_model_dir}", *SECURE, "flower.reply_timeout=60"]
    with Federation(tmp_path) as federation:
        for client in range(CLIENTS):
            node = {**ONE_THREAD, "partition-id": client, "num-partitions": CLIENTS}
            if client == 2:
                node["test-fault"] = "stall"  # sleeps once it holds its instruction
            federation.add_node(node)
        run = federation.start_run(str(QUICKSTART), *args, f"output_dir={out}")
        log = federation.root / "supernode2.log"
        deadline = time.monotonic() + 180
        while "test-fault stall" not in log.read_text(errors="replace"):
            assert run.poll() is None and time.monotonic() < deadline, federation.logs()
            time.sleep(0.2)
        federation.kill_node(2)  # it shared its keys, then died before uploading
        output, _ = run.communicate(timeout=240)
    assert run.returncode == 0, output + federation.logs()
    secure = _record(out)["aggregation"]["secure_aggregation"]
    assert secure["clients"] == [0, 1] and secure["dropped_after_key_sharing"] == 1
    assert "clients [2] dropped after key sharing" in output
    plain, _ = _plain(tiny_model_dir, tmp_path / "plain", lost=2)
    _within_bound(plain, out, secure["error_bound"])
