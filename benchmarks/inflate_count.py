"""One client claiming 10⁹ examples, against every defence, weighted by counts and uniformly.

Synthetic LoRA updates shaped like a real adapter: r=8 on q_proj and v_proj of 2 layers,
hidden 256. 9 honest clients send the global adapter plus a shared direction plus their own
noise, of the same size, in both factors, and report 50 to 200 examples; one attacker sends
``attack.kind=inflate_count``'s reply: a forged update (scale ×10, sign_flip ×1, or its honest
update) and ``num_examples`` = 10⁹. Each defence runs through ``robust.defended.Defended``
around FedAvg, once with the weighting by reported counts (before issue 28) and once with the
uniform weights every defence now uses; plain FedAvg (``robust.method=none``) weighs by counts
either way. Each cell: ‖ΔW − ΔW_honest‖ / ‖ΔW_honest‖ over the products ΔW = BA − B_gA_g, where
ΔW_honest is FedAvg over the 9 honest clients alone, averaged over seeds; in brackets the
attacker's weight as metrics.jsonl records it. Runs in seconds on a CPU.

    .venv/bin/python benchmarks/inflate_count.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from common import record

from fedit.config import DEFENCES, load_config
from fedit.robust.defended import Defended
from fedit.robust.verdicts import Weighting
from fedit.strategy import build_strategy
from fedit.types import AdapterState, ClientUpdate

LAYERS, HIDDEN, RANK = 2, 256, 8
MODULES = ("q_proj", "v_proj")
NUM_HONEST, CLAIMED = 9, 10**9
ATTACKER = NUM_HONEST  # the attacker's client id
STEP = 0.02  # the shared direction's and each client's noise scale, per factor entry
# attack.inflated_kind and λ: scale ×10 (model replacement), sign_flip ×1, an honest update.
ATTACKS = {"scale ×10": ("scale", 10.0), "sign_flip ×1": ("sign_flip", -1.0), "none": ("none", 1.0)}


def _keys() -> list[tuple[str, str]]:
    prefix = "base_model.model.model.layers.{}.self_attn.{}"
    names = [prefix.format(layer, module) for layer in range(LAYERS) for module in MODULES]
    return [(f"{name}.lora_A.weight", f"{name}.lora_B.weight") for name in names]


def _random(generator: torch.Generator, scale: float) -> AdapterState:
    state = {}
    for a_key, b_key in _keys():
        state[a_key] = scale * torch.randn(RANK, HIDDEN, generator=generator)
        state[b_key] = scale * torch.randn(HIDDEN, RANK, generator=generator)
    return state


def make_round(seed: int, forgery: float) -> tuple[AdapterState, list[ClientUpdate]]:
    """The global adapter and 10 replies: 9 honest, then the attacker (x_g + λ·its honest Δ)."""
    generator = torch.Generator().manual_seed(seed)
    global_state = {k: t * 10 for k, t in _random(generator, STEP).items()}  # a trained adapter
    direction = _random(generator, STEP)
    updates = []
    for client_id in range(NUM_HONEST + 1):
        noise = _random(generator, STEP)
        factor = forgery if client_id == ATTACKER else 1.0
        state = {k: global_state[k] + factor * (direction[k] + noise[k]) for k in global_state}
        count = int(torch.randint(50, 201, (1,), generator=generator))
        count = CLAIMED if client_id == ATTACKER else count
        updates.append(ClientUpdate(client_id, state, count, train_loss=0.0, num_steps=1))
    return global_state, updates


def product_delta(global_state: AdapterState, state: AdapterState) -> torch.Tensor:
    """ΔW = B·A − B_g·A_g of every module, flattened (HIDDEN² per module)."""
    parts = []
    for a, b in _keys():
        product = state[b].double() @ state[a].double()
        parts.append((product - global_state[b].double() @ global_state[a].double()).flatten())
    return torch.cat(parts)


def aggregate(
    method: str, weighting: Weighting, global_state: AdapterState, updates: list[ClientUpdate]
) -> tuple[AdapterState, float | None]:
    """The defended FedAvg's next adapter and the attacker's recorded weight (None if absent)."""
    cfg = load_config(
        None,
        [
            f"federation.num_clients={NUM_HONEST + 1}",
            "federation.fraction_fit=1",
            f"lora.r={RANK}",
            f"robust.method={method}",
            "robust.num_byzantine=1",
        ],
    )
    if method == "none":
        state, _ = build_strategy(cfg).aggregate_fit(1, global_state, updates)
        total = sum(u.num_examples for u in updates)
        share = {u.client_id: u.num_examples / total for u in updates}
        return state, share.get(ATTACKER)
    state, metrics = Defended(cfg, build_strategy(cfg), weighting).aggregate_fit(
        1, global_state, updates
    )
    weights = metrics["robust"]["weights"]  # empty for the coordinate-wise rules: unweighted
    return state, weights.get(str(ATTACKER))


def measure(seeds: int) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """(defence, attack or "clean", weighting) -> (mean relative distance, mean attacker weight)."""
    cells: dict[tuple[str, str, str], list[tuple[float, float | None]]] = {}
    for seed in range(seeds):
        for attack, (_, forgery) in ATTACKS.items():
            global_state, updates = make_round(seed, forgery)
            honest = updates[:NUM_HONEST]
            reference, _ = aggregate("none", "counts", global_state, honest)
            target = product_delta(global_state, reference)
            runs = {attack: updates, "clean": honest}
            for row, replies in runs.items():
                for method in DEFENCES:
                    for weighting in ("counts", "uniform"):
                        state, weight = aggregate(method, weighting, global_state, replies)
                        moved = product_delta(global_state, state) - target
                        distance = float(moved.norm() / target.norm())
                        cells.setdefault((method, row, weighting), []).append((distance, weight))
    return {
        key: (
            statistics.mean(d for d, _ in values),
            None if values[0][1] is None else statistics.mean(w or 0.0 for _, w in values),
        )
        for key, values in cells.items()
    }


def _cell(result: tuple[float, float | None], with_weight: bool) -> str:
    distance, weight = result
    if not with_weight:
        return f"{distance:.2f}"
    return f"{distance:.2f} ({'–' if weight is None else f'{weight:.3g}'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # every rejection is logged; the table says it all
    started = time.perf_counter()
    cells = measure(args.seeds)
    seconds = time.perf_counter() - started
    header = ["defence", "clean: counts", "clean: uniform"]
    for attack in ATTACKS:
        header += [f"{attack}: counts", f"{attack}: uniform"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in DEFENCES:
        row = [
            method,
            _cell(cells[(method, "clean", "counts")], False),
            _cell(cells[(method, "clean", "uniform")], False),
        ]
        for attack in ATTACKS:
            row += [_cell(cells[(method, attack, w)], True) for w in ("counts", "uniform")]
        lines.append("| " + " | ".join(row) + " |")
    body = "\n".join(
        [
            f"Synthetic updates: r={RANK} on {' and '.join(MODULES)} of {LAYERS} layers, hidden "
            f"{HIDDEN}; {NUM_HONEST} honest clients (a shared direction plus noise of the same "
            f"size, 50 to 200 examples each) and one attacker claiming {CLAIMED:,} examples "
            "with the update named in the column (`none`: its honest update). "
            "`robust.num_byzantine=1`, FedAvg inside every defence. Each cell: "
            "‖ΔW − ΔW_honest‖ / ‖ΔW_honest‖ over the products, ΔW_honest being FedAvg over "
            f"the honest clients alone, mean of {args.seeds} seeds; in brackets the attacker's "
            "weight as metrics.jsonl records it (norm_bound: its clipped coefficient; – for "
            "the unweighted coordinate-wise rules). `counts`: weighted by the reported counts, "
            "as before issue 28; `uniform`: what every defence does now (`none` is plain "
            "FedAvg and weighs by counts in both columns). `clean`: the honest clients alone, "
            "what the defence itself costs.",
            "",
            *lines,
            "",
            f"{seconds:.1f} s in all.",
        ]
    )
    record("inflate_count", "One client claiming 10⁹ examples, against each defence", body)


if __name__ == "__main__":
    main()
