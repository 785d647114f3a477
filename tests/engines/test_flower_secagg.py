"""Secure aggregation on Flower, end to end in one process: the real ServerApp transport and
ClientApp, Flower's Grid replaced by a loopback (``loopback.LoopbackGrid``) that records every
reply the server receives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")

from loopback import LoopbackGrid, stage_of  # noqa: E402

from fedit.config import load_config  # noqa: E402
from fedit.engines.flower import FlowerTransport, from_content  # noqa: E402
from fedit.engines.messages import unpack_instruction, unpack_update  # noqa: E402
from fedit.experiment import run_experiment  # noqa: E402
from helpers import tiny_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
CLIENTS = 5
FAST = (
    "engine=flower",
    "flower.insecure=true",
    "flower.reply_timeout=5",
    "eval.generate=false",
    "data.synthetic.num_examples=100",
    f"federation.num_clients={CLIENTS}",
    "federation.fraction_fit=1.0",
    "federation.rounds=1",
)
SECURE = "privacy.secure_aggregation=true"


def run(model_dir: Path, out: Path, *extra: str, silent=None) -> tuple[Path, LoopbackGrid]:
    cfg = load_config(QUICKSTART, tiny_args(model_dir, out, *FAST, *extra))
    grid = LoopbackGrid(cfg, CLIENTS, silent)
    outcome = run_experiment(cfg, transport=FlowerTransport(cfg, grid))  # type: ignore[arg-type]
    return outcome.run_dir, grid


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "global_adapter" / "adapter_model.safetensors"))


def round_record(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(row for row in rows if row["round"] == 1)


def flat(state: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([state[k].flatten().double() for k in sorted(state)]).numpy()


def clear_updates(grid: LoopbackGrid) -> tuple[dict[int, np.ndarray], dict[int, int]]:
    """Each client's Δ (flattened, sorted keys) and example count, from a plain run's replies."""
    deltas, counts = {}, {}
    for reply in grid.received:
        if reply.metadata.message_type != "train":
            continue
        instruction = unpack_instruction(
            from_content(grid.sent[reply.metadata.reply_to_message_id].content)
        )
        update = unpack_update(from_content(reply.content), instruction)
        delta = {k: update.state[k] - instruction.state[k] for k in instruction.state}
        deltas[update.client_id], counts[update.client_id] = flat(delta), update.num_examples
    return deltas, counts


def masked_uploads(grid: LoopbackGrid) -> list[np.ndarray]:
    uploads = []
    for reply in grid.received:
        if "fedit-masked" in reply.content.array_records:
            array = reply.content.array_records["fedit-masked"]["masked"]
            uploads.append(np.frombuffer(array.data, dtype="<u4").astype(np.float64))
    return uploads


@pytest.fixture(scope="module")
def plain_and_secure(tiny_model_dir, tmp_path_factory):
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    root = tmp_path_factory.mktemp("secagg")
    plain = run(tiny_model_dir, root / "plain")
    secure = run(tiny_model_dir, root / "secure", SECURE)
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None
    return plain, secure


def test_secure_sum_equals_fedavg_within_the_quantization_bound(plain_and_secure):
    (plain, _), (secure, _) = plain_and_secure
    expected, got = adapter(plain), adapter(secure)
    record = round_record(secure)["aggregation"]["secure_aggregation"]
    assert record["clients"] == list(range(CLIENTS)) and record["clipped_coordinates"] == 0
    bound = record["error_bound"]
    assert 0 < bound < 1e-3 * record["update_scale"]
    # Both adapters are stored in fp32: one rounding each, on top of the quantization's bound.
    largest = max(t.abs().max().item() for t in expected.values())
    storage = 2 * float(np.finfo(np.float32).eps) * largest
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert 0 < worst <= bound + storage  # quantized, yet within the bound on every coordinate
    report = (secure / "report.md").read_text()
    assert f"at most {bound:.2e} a coordinate" in report
    assert f"over {CLIENTS} client rounds" in report  # bytes counted, though none per client


def test_the_server_learns_only_the_sum(plain_and_secure):
    (_, plain_grid), (secure, grid) = plain_and_secure
    assert {stage_of(grid.sent[r.metadata.reply_to_message_id]) for r in grid.received} == {
        "query",
        "keys",
        "shares",
        "train",
        "unmask",
    }
    for reply in grid.received:  # the probe: every payload the server received
        records = reply.content.config_records
        assert set(records) <= {"fedit-secagg", "site"}
        assert set(reply.content.array_records) <= {"fedit-masked"}
        assert set(records.get("fedit-secagg", {})) <= {
            "pk1",
            "pk2",
            "dst",
            "ciphertexts",
            "b_owner",
            "b_share",
            "sk_owner",
            "sk_share",
        }
    uploads = masked_uploads(grid)
    deltas, counts = clear_updates(plain_grid)
    assert len(uploads) == len(deltas) == CLIENTS
    # Independent vectors of d coordinates have correlation ~ N(0, 1/d): 5 standard deviations.
    threshold = 5 / np.sqrt(len(uploads[0]) - 3)
    for upload in uploads:
        for delta in deltas.values():
            assert abs(np.corrcoef(upload[3:], delta)[0, 1]) < threshold
    # The sum of the uploads, unmasked, is the weighted sum: it correlates with it.
    weighted = sum(counts[c] * deltas[c] for c in deltas) / sum(counts.values())
    start = unpack_instruction(
        from_content(next(m.content for m in grid.sent.values() if stage_of(m) == "train"))
    ).state
    released = flat(adapter(secure)) - flat(start)
    assert np.corrcoef(released, weighted)[0, 1] > 0.999
    # And nothing per client was written.
    row = round_record(secure)
    assert row["train_loss"] == {} and row["num_examples"] == {} and row["client_metrics"] == {}


def _silent_from(stage: str, clients: set[int]):
    """These clients stop answering from ``stage`` on (a SuperNode lost mid-round)."""
    order = ["keys", "shares", "train", "unmask"]

    def silent(client: int, message) -> bool:
        asked = stage_of(message)
        return client in clients and asked in order and order.index(asked) >= order.index(stage)

    return silent


def test_a_client_lost_after_key_sharing_is_recovered_from_the_shares(
    tiny_model_dir, tmp_path, run_identity
):
    lost = _silent_from("train", {2})
    survivors, _ = run(tiny_model_dir, tmp_path / "plain", silent=lost)  # FedAvg over 4
    secure, grid = run(tiny_model_dir, tmp_path / "secure", SECURE, silent=lost)
    record = round_record(secure)["aggregation"]["secure_aggregation"]
    assert record["clients"] == [0, 1, 3, 4] and record["dropped_after_key_sharing"] == 1
    # Its neighbours masked with it; the server removed those masks with its rebuilt key.
    assert any(
        r.content.config_records.get("fedit-secagg", {}).get("sk_owner") for r in grid.received
    )
    expected, got = adapter(survivors), adapter(secure)
    largest = max(t.abs().max().item() for t in expected.values())
    worst = max((expected[k] - got[k]).abs().max().item() for k in expected)
    assert worst <= record["error_bound"] + 2 * float(np.finfo(np.float32).eps) * largest


def test_too_few_survivors_stop_the_run_naming_them(tiny_model_dir, tmp_path, run_identity):
    from fedit.server.loop import RoundFailedError

    # t = 3 of 4 neighbours: with two survivors, each has one surviving neighbour's share.
    lost = _silent_from("train", {1, 2, 3})
    with pytest.raises(
        RoundFailedError,
        match=r"round 1: cannot unmask the sum of clients \[0, 4\]: .*"
        r"self-masks of clients \[0, 4\] and the mask keys of dropped clients \[1, 2, 3\]",
    ):
        run(tiny_model_dir, tmp_path / "secure", SECURE, silent=lost)


def test_a_client_lost_during_key_sharing_is_left_out(tiny_model_dir, tmp_path, run_identity):
    secure, _ = run(tiny_model_dir, tmp_path / "secure", SECURE, silent=_silent_from("shares", {4}))
    record = round_record(secure)["aggregation"]["secure_aggregation"]
    assert record["clients"] == [0, 1, 2, 3] and record["dropped_after_key_sharing"] == 0


DP = (
    "privacy.level=client",
    "privacy.noise_multiplier=1.0",
    "privacy.clip_norm=0.05",
    "privacy.adaptive_clip=true",
    "privacy.count_noise_std=1.0",
)


def test_distributed_dp_spends_the_central_epsilon_and_sends_nothing_per_client(
    tiny_model_dir, tmp_path, run_identity
):
    central, _ = run(tiny_model_dir, tmp_path / "central", *DP, "privacy.noise_at=server")
    secure, grid = run(tiny_model_dir, tmp_path / "secure", *DP, "privacy.noise_at=clients", SECURE)
    plan = json.loads((secure / "privacy.json").read_text())
    assert plan["noise_at"] == "clients"
    row = round_record(secure)
    # The same ε as the central mechanism with the same z, sampling and rounds.
    expected = round_record(central)["privacy"]["epsilon"]
    assert row["privacy"]["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert row["privacy"]["secure_aggregation"] is True  # the ε line names the server
    # The range follows the noise: C + 8 noise-share stds, so the noise is never clipped.
    share = row["privacy"]["update_noise_multiplier"] * 0.05 / np.sqrt(CLIENTS)
    record = row["aggregation"]["secure_aggregation"]
    assert record["clipping_range"] == pytest.approx(0.05 + 8 * share)
    assert set(record) == {"bits", "clipping_range", "quantization_step"}  # nothing count-like
    assert row["privacy"]["unclipped_estimate"] is not None  # the noised bits, summed masked
    assert row["train_loss"] == {} and row["num_examples"] == {} and row["client_metrics"] == {}
    for upload in masked_uploads(grid):
        assert upload[0] != 1  # even the uniform weight travels masked


def test_the_threshold_follows_the_clients_of_each_round(tiny_model_dir, tmp_path, run_identity):
    # 3 of 5 clients a round: k = 2 neighbours each, t = 2 of 3 holders (as the quickstart,
    # which draws 4 of 8).
    secure, _ = run(
        tiny_model_dir, tmp_path / "s", SECURE, "federation.fraction_fit=0.6", "federation.rounds=2"
    )
    rows = [json.loads(line) for line in (secure / "metrics.jsonl").read_text().splitlines()]
    summed = [row["aggregation"]["secure_aggregation"]["clients"] for row in rows[1:]]
    assert [len(clients) for clients in summed] == [3, 3]
    assert [row["selected_clients"] for row in rows[1:]] == summed


def test_a_draw_too_small_to_hide_an_update_trains_no_one(tiny_model_dir, tmp_path, run_identity):
    # Poisson draws vary: with 5 clients at rate 0.5 these rounds draw 2 and then 3 or more.
    poisson = ("federation.selection=poisson", "federation.sample_rate=0.5", "federation.rounds=3")
    secure, grid = run(tiny_model_dir, tmp_path / "s", SECURE, *poisson, "seed=3")
    rows = [json.loads(line) for line in (secure / "metrics.jsonl").read_text().splitlines()]
    sizes = [len(row["selected_clients"]) for row in rows[1:]]
    assert min(sizes) < 3 <= max(sizes), sizes
    trained = {int(m.metadata.group_id) for m in grid.sent.values() if stage_of(m) == "keys"}
    for row in rows[1:]:
        if len(row["selected_clients"]) < 3:
            assert row["round"] not in trained and "skipped" in row["aggregation"]
        else:
            summed = row["aggregation"]["secure_aggregation"]["clients"]
            assert row["round"] in trained and summed == row["selected_clients"]
