"""Measured time on a Flower deployment (``federation.system.profiles=measured``): the real
ServerApp transport and ClientApp over the loopback Grid, each round timed by the server's wall
clock, and ``federation.deadline`` as the reply timeout."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from loopback import LoopbackGrid, stage_of  # noqa: E402

from fedit.cli.main import main  # noqa: E402
from fedit.config import load_config  # noqa: E402
from fedit.engines.flower import FlowerTransport  # noqa: E402
from fedit.experiment import run_experiment  # noqa: E402
from helpers import tiny_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CLIENTS = 4
FAST = (
    "engine=flower",
    "flower.insecure=true",
    "eval.generate=false",
    "data.synthetic.num_examples=80",
    f"federation.num_clients={CLIENTS}",
    "federation.fraction_fit=1.0",
    "federation.rounds=2",
    "federation.system.profiles=measured",
)


def run(model_dir: Path, out: Path, *extra: str, silent=None) -> tuple[list[dict], float]:
    cfg = load_config(QUICKSTART, tiny_args(model_dir, out, *FAST, *extra))
    grid = LoopbackGrid(cfg, CLIENTS, silent)
    started = time.monotonic()
    run_experiment(cfg, transport=FlowerTransport(cfg, grid))  # type: ignore[arg-type]
    wall = time.monotonic() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return rows, wall


def test_rounds_are_timed_by_the_wall_clock(tiny_model_dir, tmp_path, run_identity):
    rows, _ = run(tiny_model_dir, tmp_path / "run")
    elapsed = 0.0
    for record in rows[1:]:
        system = record["system"]
        assert sorted(system["clients"]) == [str(c) for c in range(CLIENTS)]
        for client, t in system["clients"].items():
            trained = record["client_metrics"][client]["seconds"]
            # the client's own training time, and the rest of the server's round trip
            assert t["compute"] == pytest.approx(trained) and trained > 0
            assert t["network"] >= 0
            assert t["total"] == pytest.approx(t["compute"] + t["network"])
            assert record["client_metrics"][client]["round_trip_seconds"] == pytest.approx(
                t["total"]
            )
        # the loopback answers at the push, so the round lasts until the pull that fetched
        # its last reply: at least its slowest client, within the first pull's wait
        assert system["duration"] >= max(t["total"] for t in system["clients"].values())
        assert "late" not in system  # no deadline: nothing is late
        elapsed += system["duration"]
        assert system["elapsed"] == pytest.approx(elapsed)
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Measured time" in report and "compute" in report and "network" in report


def test_the_deadline_is_the_reply_timeout_and_late_clients_are_wasted(
    tiny_model_dir, tmp_path, run_identity
):
    def silent(client, message):  # client 3 never answers a training message
        return client == 3 and stage_of(message) == "train"

    rows, wall = run(
        tiny_model_dir,
        tmp_path / "run",
        "federation.deadline=1.5",
        "flower.reply_timeout=300",  # replaced by the deadline: the run would take 10 min
        "federation.min_fit_clients=2",
        silent=silent,
    )
    assert wall < 120  # two rounds waited 1.5 s each, not 300 s
    for record in rows[1:]:
        system = record["system"]
        assert system["late"] == [3]
        assert sorted(system["clients"]) == ["0", "1", "2"]
        assert system["duration"] >= 1.5  # the server waited out the deadline
        assert system["wasted"]["bytes_down"] > 0  # only what was sent to it is known
        assert "skipped" not in record["aggregation"]  # a late client is not a failure
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Missed the deadline: 2 client rounds" in report


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("engine=simulation",), "federation.system.profiles=measured: times real clients"),
        (
            ("engine=flower", "federation.system.availability=0.8"),
            "federation.system.availability: profiles=measured",
        ),
    ],
    ids=["not a deployment", "simulated availability"],
)
def test_measured_time_refusals_exit_2_with_one_line(
    extra, expected, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    args = tiny_args(tiny_model_dir, out, "federation.system.profiles=measured", *extra)
    code = main(["run", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


@pytest.mark.slow  # a SuperLink and two SuperNodes (~1 min); the loopback tests cover the logic
def test_a_real_deployment_records_its_measured_times(tiny_model_dir, tmp_path):
    from flower_support import Federation

    out = tmp_path / "run"
    overrides = [o for o in FAST if not o.startswith(("engine=", "federation.num_clients"))]
    with Federation(tmp_path) as federation:
        for client in range(2):
            federation.add_node({"partition-id": client, "num-partitions": 2})
        result = federation.run(
            str(QUICKSTART),
            *tiny_args(tiny_model_dir, out, *overrides, "federation.num_clients=2"),
        )
    assert (out / "global_adapter").is_dir(), result.stdout + federation.logs()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for record in rows[1:]:
        times = record["system"]["clients"]
        assert sorted(times) == ["0", "1"]
        for t in times.values():
            # a real SuperNode starts a ClientApp and moves the bytes: the network part is real
            assert t["compute"] > 0 and t["network"] > 0
    assert "## Measured time" in (out / "report.md").read_text()
