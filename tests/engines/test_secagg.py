"""SecAgg+'s arithmetic with the real primitives, in one process (``fedit.engines.secagg``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")

from fedit.config import load_config  # noqa: E402
from fedit.engines import secagg  # noqa: E402
from fedit.engines.secagg import SecAggParams, SecureAggregationError  # noqa: E402
from fedit.privacy.accountant import epsilon, repeated, round_event  # noqa: E402
from fedit.server.privacy import PrivacyRun  # noqa: E402
from fedit.types import SecureSum  # noqa: E402

PARAMS = SecAggParams(bits=24, clipping_range=0.25, threshold=3, max_weight=100.0)


class Federation:
    """Clients that have run stages 1 and 2 with each other (k neighbours each)."""

    def __init__(self, clients: int, k: int, params: SecAggParams = PARAMS, seed: int = 0):
        self.params = params
        self.clients = list(range(clients))
        self.private, self.pk1, self.pk2 = {}, {}, {}
        for i in self.clients:
            self.private[i], (self.pk1[i], self.pk2[i]) = secagg.new_keys()
        self.graph = secagg.neighbourhoods(self.clients, k, np.random.default_rng(seed))
        self.seeds, own, inbox = {}, {}, {i: {} for i in self.clients}
        for i in self.clients:
            pk2 = {j: self.pk2[j] for j in self.graph[i]}
            self.seeds[i], own[i], ciphertexts = secagg.share_secrets(
                i, self.private[i], pk2, params.threshold
            )
            for j, ciphertext in ciphertexts.items():
                inbox[j][i] = ciphertext
        self.shares = {
            i: secagg.open_shares(
                i, self.private[i], {j: self.pk2[j] for j in self.graph[i]}, inbox[i]
            )
            for i in self.clients
        }
        self.own = own  # each client's own share of its seed

    def upload(self, i: int, values: np.ndarray, examples: int, bit: float = 0.0) -> np.ndarray:
        vector = secagg.encode(values, examples, bit, self.params)
        pairs = secagg.pair_seeds(self.private[i], {j: self.pk1[j] for j in self.shares[i]})
        return secagg.mask(vector, i, self.seeds[i], pairs)

    def unmask(self, uploads: dict[int, np.ndarray]) -> secagg.DecodedSum:
        active, dead = sorted(uploads), sorted(set(self.clients) - set(uploads))
        b_shares, sk_shares = {}, {}
        for j in active:
            held = {**self.shares[j], j: (self.own[j], b"")}
            b, sk = secagg.unmask_reply(j, held, active, dead)
            for owner, share in b.items():
                b_shares.setdefault(owner, []).append(share)
            for owner, share in sk.items():
                sk_shares.setdefault(owner, []).append(share)
        masked_with = {i: sorted(self.shares[i]) for i in self.clients}
        total = secagg.unmask_sum(
            uploads, masked_with, self.pk1, b_shares, sk_shares, self.params.threshold
        )
        return secagg.decode(total, len(uploads), self.params)


@pytest.mark.parametrize(
    ("k", "lost"), [(5, []), (4, [2]), (3, [])], ids=["secagg", "plus-drop", "odd-k"]
)
def test_the_unmasked_sum_is_the_weighted_sum_within_one_step_a_client(k, lost):
    params = SecAggParams(bits=24, clipping_range=0.25, threshold=2, max_weight=100.0)
    federation = Federation(6, k, params)
    rng = np.random.default_rng(1)
    deltas = {i: rng.normal(0, 0.01, 3000) for i in federation.clients}
    counts = {i: 10 + 7 * i for i in federation.clients}
    uploads = {
        i: federation.upload(i, deltas[i], counts[i]) for i in federation.clients if i not in lost
    }
    decoded = federation.unmask(uploads)
    assert decoded.weight == sum(counts[i] for i in uploads) / 100.0  # exact
    expected = sum(counts[i] / 100.0 * deltas[i] for i in uploads)
    error = np.abs(decoded.values - expected).max()
    assert 0 < error <= secagg.error_bound(params, len(uploads))
    assert decoded.clipped == 0


def test_one_upload_alone_looks_uniform_and_hides_its_update():
    federation = Federation(4, 3)
    delta = np.random.default_rng(2).normal(0, 0.01, 20000)
    upload = federation.upload(0, delta, 50).astype(np.float64)
    assert abs(np.corrcoef(upload[3:], delta)[0, 1]) < 5 / math.sqrt(len(delta))
    # Uniform over [0, 2^32): mean 2^31, std 2^32/√12.
    assert (
        abs(upload.mean() / 2**31 - 1) < 0.02
        and abs(upload.std() / (2**32 / math.sqrt(12)) - 1) < 0.02
    )


def test_masks_are_not_flowers_32_bit_generator():
    # Flower's pseudo_rand_gen XOR-folds a seed to 32 bits: these two seeds give it one stream.
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    a = bytes(32)
    b = (1).to_bytes(4, "little") * 2 + bytes(24)
    assert (pseudo_rand_gen(a, 1 << 32, [(8,)])[0] == pseudo_rand_gen(b, 1 << 32, [(8,)])[0]).all()
    assert not (secagg.mask_stream(a, 8) == secagg.mask_stream(b, 8)).all()
    assert (secagg.mask_stream(a, 8) == secagg.mask_stream(a, 8)).all()  # a function of the seed


def test_an_unmask_request_that_would_reveal_one_client_is_refused():
    federation = Federation(4, 3)
    with pytest.raises(SecureAggregationError, match=r"lists \[1\] as both active and dead"):
        secagg.unmask_reply(0, federation.shares[0], [0, 1, 2], [1, 3])
    with pytest.raises(SecureAggregationError, match="refused"):
        secagg.unmask_reply(0, federation.shares[0], [1, 2], [0])


def test_shares_for_someone_else_are_refused():
    federation = Federation(4, 3)
    pk2 = {j: federation.pk2[j] for j in federation.graph[1]}
    _, _, ciphertexts = secagg.share_secrets(1, federation.private[1], pk2, 3)
    own = {j: federation.pk2[j] for j in federation.graph[2]}
    with pytest.raises(SecureAggregationError, match="client 2: shares from 1"):
        secagg.open_shares(2, federation.private[2], own, {1: ciphertexts[3]})  # meant for 3


def test_neighbourhoods_are_symmetric_with_k_each():
    for clients, k in [(8, 7), (8, 4), (9, 4), (8, 3), (32, 6)]:
        graph = secagg.neighbourhoods(list(range(clients)), k, np.random.default_rng(clients))
        assert all(len(graph[i]) == k for i in graph), (clients, k)
        assert all(i in graph[j] for i in graph for j in graph[i])


def test_a_forged_sum_is_refused():
    with pytest.raises(SecureAggregationError, match="out of range"):
        secagg.decode(np.array([0, 0, 0, 5 * PARAMS.levels], dtype=np.int64), 2, PARAMS)


def _private_run(tmp_path, clients: int = 20, expected: float = 10.0) -> PrivacyRun:
    cfg = load_config(
        None,
        [
            "engine=flower-simulation",
            "privacy.secure_aggregation=true",
            "privacy.level=client",
            "privacy.noise_at=clients",
            "privacy.noise_multiplier=1.0",
            "privacy.clip_norm=0.5",
            f"federation.num_clients={clients}",
            f"federation.fraction_fit={expected / clients}",
            "federation.rounds=3",
            f"output_dir={tmp_path}",
        ],
    )
    return PrivacyRun.start(cfg, [30] * clients)


@pytest.mark.parametrize("replies", [10, 7], ids=["all", "3-missing"])
def test_distributed_dp_releases_the_accounted_noise(tmp_path, replies):
    """Each client's noise share goes through quantization, masks and the unmasked sum; with
    the server's top-up for missing replies, the released sum's noise has std z·C (2%)."""
    run = _private_run(tmp_path)
    plan = run.plan
    assert plan.noise_at == "clients" and plan.client_sampling.expected_size == 10
    d, z, c = 50_000, plan.update_noise_multiplier, run.clip_norm
    share = z * c / math.sqrt(plan.client_sampling.expected_size)
    params = SecAggParams(24, c + 8 * share, threshold=4, max_weight=0.0, count_clipped=False)
    federation = Federation(replies, replies - 1, params)
    generator = np.random.default_rng(3)
    uploads = {
        i: federation.upload(i, generator.normal(0, share, d), 1) for i in federation.clients
    }
    decoded = federation.unmask(uploads)
    assert decoded.weight == replies
    names = ["w"]
    start = {"w": torch.zeros(d)}
    run.instruct([])
    secure = SecureSum(
        list(range(replies)), {"w": torch.from_numpy(decoded.values).float()}, replies, 0.0
    )
    (reply,) = run.secure_input(1, start, secure)
    released_sum = reply.state[names[0]].double().numpy() * plan.client_sampling.expected_size
    assert abs(released_sum.std() / (z * c) - 1) < 0.02
    # ε is the central accountant's for the same z, sampling and rounds.
    event = round_event(plan.client_sampling, z, plan.count_noise_std, plan.accountant)
    central = epsilon(repeated(event, 3), plan.delta, plan.accountant, plan.relation)
    assert plan.client_epsilon(3) == pytest.approx(central, rel=1e-12)
