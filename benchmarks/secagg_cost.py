"""What secure aggregation costs: bytes and seconds per round, with and without it.

.venv/bin/python benchmarks/secagg_cost.py               # both parts, ~25 min on 2 idle cores
.venv/bin/python benchmarks/secagg_cost.py --part protocol   # the arithmetic alone, ~1 min

``e2e``: Flower's simulation runtime on the embedded SmolLM2-135M with the quickstart's LoRA
(r=16 on q, k, v, o), one round of one local step, every client selected: the quickstart's 8
clients, and 32 virtual clients, each without SecAgg, with SecAgg (every client masks with all
others) and with SecAgg+ (``privacy.secagg.neighbours`` small). The round's ``seconds.fit`` is
the server's wall time from instructions to the aggregated sum (training included, the same
in every row); bytes are what the round's messages carried (the fedit messages, masked
vectors and key material).

``protocol``: the SecAgg arithmetic of ``fedit.engines.secagg`` alone, on a vector of the
quickstart adapter's size, for n clients and neighbourhood k: one client's cost (stage 2:
2k+1 shares and k encryptions; stage 3: masking with k+1 ChaCha20 streams of d words) and
the server's unmasking (n self-masks, plus k streams for each client lost after key sharing).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import QUICKSTART, record

from fedit.config import load_config
from fedit.engines import secagg
from fedit.engines.secagg import SecAggParams

ROUND = [
    "federation.rounds=1",
    "federation.fraction_fit=1.0",
    "train.local_steps=1",
    "eval.base=false",
    "eval.every=1000",
    "eval.generate=false",
    "overwrite=true",
]


def adapter_size() -> int:
    """Coordinates of the quickstart adapter (SmolLM2-135M, r=16 on q, k, v, o)."""
    from fedit.model.loading import load_model
    from fedit.model.lora import apply_lora, get_adapter_state

    cfg = load_config(QUICKSTART)
    base, _ = load_model(cfg.model)
    state = get_adapter_state(apply_lora(base, cfg.lora, seed=0))
    return sum(t.numel() for t in state.values())


def e2e_row(clients: int, variant: str, out: Path) -> dict[str, float | str]:
    from fedit.flower_simulation import run_flower_simulation

    extra = [f"federation.num_clients={clients}", f"output_dir={out}", "engine=flower-simulation"]
    if clients > 8:
        extra.append(f"data.synthetic.num_examples={max(900, 30 * clients)}")
    if variant != "plain":
        extra.append("privacy.secure_aggregation=true")
    if variant.startswith("secagg+"):
        extra.append(f"privacy.secagg.neighbours={variant.removeprefix('secagg+ k=')}")
    cfg = load_config(QUICKSTART, [*ROUND, *extra])
    started = time.perf_counter()
    outcome = run_flower_simulation(cfg)
    total = time.perf_counter() - started
    rows = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").open()]
    row = next(r for r in rows if r["round"] == 1)
    return {
        "clients": clients,
        "variant": variant,
        "fit_seconds": row["seconds"]["fit"],
        "run_seconds": total,
        "bytes_down": row["communication"]["bytes_down"],
        "bytes_up": row["communication"]["bytes_up"],
    }


def e2e(out: Path) -> str:
    rows = []
    for clients, k in ((8, 4), (32, 8)):
        for variant in ("plain", "secagg", f"secagg+ k={k}"):
            rows.append(e2e_row(clients, variant, out / f"{clients}-{variant.replace(' ', '')}"))
            print(rows[-1], flush=True)
    lines = [
        "| clients | variant | round fit (s) | × plain | MB down | MB up | × plain up |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(r for r in rows if r["clients"] == row["clients"] and r["variant"] == "plain")
        lines.append(
            f"| {row['clients']} | {row['variant']} | {row['fit_seconds']:.1f} | "
            f"{float(row['fit_seconds']) / float(base['fit_seconds']):.2f} | "
            f"{float(row['bytes_down']) / 1e6:.1f} | {float(row['bytes_up']) / 1e6:.1f} | "
            f"{float(row['bytes_up']) / float(base['bytes_up']):.2f} |"
        )
    return "\n".join(lines)


def _time(function, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


def _protocol_row(n: int, k: int, values: np.ndarray, rng: np.random.Generator) -> str:
    """One client's and the server's times for n clients with k neighbours each."""
    d = len(values)
    params = SecAggParams(bits=24, clipping_range=0.25, threshold=k // 2 + 1, max_weight=100.0)
    private, _ = secagg.new_keys()
    others = [secagg.new_keys()[1] for _ in range(k)]
    pk2s = {j + 1: key[1] for j, key in enumerate(others)}
    shares_s = _time(lambda: secagg.share_secrets(0, private, pk2s, params.threshold))
    seeds = secagg.pair_seeds(private, {j + 1: key[0] for j, key in enumerate(others)})
    seed = bytes(32)
    mask_s = _time(lambda: secagg.mask(secagg.encode(values, 10, 0.0, params), 0, seed, seeds))
    uploads = {i: rng.integers(0, 2**32, d + 3, dtype=np.uint64).astype("<u4") for i in range(n)}
    # The server's work is streams: one per survivor (self-mask) plus k per lost client.
    survivors_s = _time(
        lambda: [secagg.mask_stream(bytes([i % 256]) * 32, d + 3) for i in range(n)]
    )
    summing_s = _time(lambda: sum(u.astype(np.uint64) for u in uploads.values()) % 2**32)
    lost_s = _time(lambda: [secagg.mask_stream(bytes(32), d + 3) for _ in range(k)])
    return (
        f"| {n} | {k} | {shares_s:.3f} | {mask_s:.2f} | {survivors_s + summing_s:.2f} | "
        f"{survivors_s + summing_s + lost_s:.2f} |"
    )


def protocol(d: int) -> str:
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.01, d)
    lines = [
        f"d = {d:,} coordinates (the quickstart adapter), best of 3.",
        "",
        "| n | k | client: shares (s) | client: encode + mask (s) | server: unmask, none lost (s)"
        " | server: unmask, one lost (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, k in ((8, 7), (32, 31), (32, 8), (128, 8)):
        lines.append(_protocol_row(n, k, values, rng))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "e2e", "protocol"), default="all")
    args = parser.parse_args()
    sections = []
    d = adapter_size()
    if args.part in ("all", "protocol"):
        sections.append("### The arithmetic alone\n\n" + protocol(d))
    if args.part in ("all", "e2e"):
        with tempfile.TemporaryDirectory() as tmp:
            sections.append("### One round end to end (Flower simulation)\n\n" + e2e(Path(tmp)))
    record("secagg_cost", "Secure aggregation: bytes and seconds per round", "\n\n".join(sections))


if __name__ == "__main__":
    main()
