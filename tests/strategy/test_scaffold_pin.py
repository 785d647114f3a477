"""SCAFFOLD's result pinned before issue 33 moved c_i from the server to the client.

The digest and byte counts below were produced by the code before the move (commit 6c2699a,
where ``Scaffold`` kept every c_i and sent it down as ``client_control``). Moving c_i into the
client's store must not change the trained adapter while every reply is aggregated (design
note docs/design/personalization.md, section 2, "Same result"), so the digest is compared bit
for bit. The pin holds for fp32 on a CPU; another BLAS could change the last bits of a matmul,
and then only a checkout of that commit may regenerate it (``_digest`` of its final adapter).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedit.config import load_config
from fedit.experiment import run_experiment
from helpers import tiny_args

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ARGS = ("eval.generate=false", "data.synthetic.num_examples=80", "federation.rounds=3")

# sha256 over the final adapter's keys (sorted) and their fp32 bytes. Clients 1 and 0 each
# train twice, so their c_i from one round corrects the next.
PINNED_ADAPTER_SHA256 = "d51aeeb17f445a0c371f7aeec9ad297f32b39e38a194d9b46cc4b085de4b3268"
# round -> client -> bytes_down: the adapter, c and c_i, and the JSON header.
PINNED_BYTES_DOWN = {
    1: {1: 178699, 3: 178697},
    2: {0: 178714, 1: 178715},
    3: {0: 178715, 2: 178715},
}
# FitConfig fields added since the pin: each adds `, "key": value` to every header.
ADDED_FIELDS: dict[str, object] = {"shared": "all"}
# ... and the stamp of a run that keeps client state (client.state), for round r.
STAMP_FIELDS = {"state_run": "0" * 32, "state_attempts": "1"}


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode("utf-8"))
        digest.update(state[key].contiguous().numpy().tobytes())
    return digest.hexdigest()


def added_header_bytes(fields: dict[str, object]) -> int:
    """What ``fields`` add to a JSON header: ``, "key": value`` each."""
    return sum(len(json.dumps(k)) + len(json.dumps(v)) + 4 for k, v in fields.items())


def test_scaffold_matches_the_pinned_run(tiny_model_dir, tmp_path):
    args = tiny_args(tiny_model_dir, tmp_path / "run", *ARGS, "strategy.name=scaffold")
    outcome = run_experiment(load_config(QUICKSTART, args))
    final = load_file(str(outcome.run_dir / "global_adapter" / "adapter_model.safetensors"))
    assert _digest(final) == PINNED_ADAPTER_SHA256

    def grown(server_round: int) -> int:
        return added_header_bytes({**ADDED_FIELDS, **STAMP_FIELDS, "server_round": server_round})

    measured = {
        record["round"]: {int(c): m["bytes_down"] for c, m in record["client_metrics"].items()}
        for record in outcome.history
        if record["round"] > 0
    }
    expected = {
        r: {c: pinned + grown(r) for c, pinned in clients.items()}
        for r, clients in PINNED_BYTES_DOWN.items()
    }
    assert measured == expected
