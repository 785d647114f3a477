"""Differential privacy on the embedded suite: accuracy at ε ∈ {∞, 8, 3, 1}, and its cost.

A scaled-down version of the experiment in issue 12 (docs/privacy.md says what was scaled):
SmolLM2-135M, 100 clients holding 10 synthetic examples each (2 category shards), Poisson
selection with rate 0.1 (10 clients per round on average, the issue's lower end), 3 rounds of
1 local step of 4 examples. Client level (DP-FedAvg, noise at the server) for fedavg and
ffa_lora; example level (DP-SGD in each client) for fedavg; and client level at ε = 3 with 50,
100 and 200 clients (5, 10, 20 per round). The clip norm C is the median norm of the update of
the first 3 clients from the initial adapter (McMahan et al. 2018 clip at about the median),
measured here; ``cost`` times ``fit_client`` with and without DP on the same clients,
interleaved.

    .venv/bin/python benchmarks/privacy.py            # ~15 min on 2 idle cores
    .venv/bin/python benchmarks/privacy.py --resume   # keep finished runs of results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import ROOT, record

from fedit.client.fit import fit_client
from fedit.config import load_config
from fedit.data.prepare import prepare_data
from fedit.engines.simulation import SimulationTransport
from fedit.experiment import load_setup, run_experiment
from fedit.model.lora import get_adapter_state
from fedit.privacy.mechanism import global_norm, update_delta
from fedit.types import FitConfig, FitInstruction, shared_names

CLIENTS_PER_ROUND_RATE = 0.1
EPSILONS = (8.0, 3.0, 1.0)


def overrides(num_clients: int, out: Path, *extra: str) -> list[str]:
    return [
        f"federation.num_clients={num_clients}",
        f"data.synthetic.num_examples={10 * num_clients + 18}",
        "data.test_per_category=2",  # 18 held-out examples
        "federation.selection=poisson",
        f"federation.sample_rate={CLIENTS_PER_ROUND_RATE}",
        "federation.rounds=3",
        "train.local_steps=1",
        "train.batch_size=4",
        "train.micro_batch_size=4",
        "train.lr=3e-3",
        "train.lr_schedule=constant",
        "eval.every=1000",
        "eval.base=false",
        "eval.max_new_tokens=8",
        f"output_dir={out}",
        "overwrite=true",
        *extra,
    ]


def _fit(setup, cfg, client: int, start, **fields) -> tuple[float, dict]:
    config = FitConfig(lr=cfg.train.lr, rank=cfg.lora.r, seed=client, **fields)
    started = time.perf_counter()
    update = fit_client(
        setup.server.model, setup.client_data[client], cfg, FitInstruction(client, start, config)
    )
    return time.perf_counter() - started, update.state


def measure(out: Path) -> dict:
    """Median update norms (the clip norms) and the time of a client's round with DP / without."""
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides(100, out / "measure"))
    setup = load_setup(cfg, prepare_data(cfg))
    start = get_adapter_state(setup.server.model)
    norms: dict[str, list[float]] = {"all": [], "lora_B": []}
    times: dict[str, list[float]] = {"none": [], "client": [], "example": []}
    for client in range(3):
        for trainable in norms:
            _, state = _fit(setup, cfg, client, start, trainable=trainable)
            names = shared_names(start, FitConfig(lr=0.0, rank=0, seed=0, trainable=trainable))
            norms[trainable].append(global_norm(update_delta(state, start, names)))
    clip = {k: statistics.median(v) for k, v in norms.items()}
    for client in range(3):  # interleaved, so that load on the machine hits all three alike
        times["none"].append(_fit(setup, cfg, client, start)[0])
        times["client"].append(
            _fit(setup, cfg, client, start, dp_level="client", dp_clip_norm=clip["all"])[0]
        )
        times["example"].append(
            _fit(
                setup,
                cfg,
                client,
                start,
                dp_level="example",
                dp_clip_norm=1.0,
                dp_noise_multiplier=1.0,
            )[0]
        )
    return {"clip": clip, "norms": norms, "times": times}


def run(label: str, num_clients: int, out: Path, extra: list[str]) -> dict:
    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides(num_clients, out, *extra))
    started = time.perf_counter()
    # Client-level selection is secret and metrics.jsonl no longer names it: the benchmark, in
    # the server's seat, counts the instructions the transport carries instead.
    instructed: list[int] = []
    fit = SimulationTransport.fit

    def counting(self, instructions, server_round):
        instructed.append(len(instructions))
        return fit(self, instructions, server_round)

    SimulationTransport.fit = counting  # type: ignore[method-assign]
    try:
        outcome = run_experiment(cfg)
    finally:
        SimulationTransport.fit = fit  # type: ignore[method-assign]
    final = outcome.history[-1]
    privacy = final.get("privacy") or {}
    rounds = [r for r in outcome.history if r["round"] > 0]
    return {
        "label": label,
        "clients": num_clients,
        "accuracy": final["eval"]["accuracy"],
        "loss": final["eval"]["loss"],
        "epsilon": privacy.get("epsilon"),
        "z": privacy.get("noise_multiplier"),
        "clip": privacy.get("clip_norm"),
        "delta": privacy.get("delta"),
        "per_round": statistics.mean(instructed) if instructed else 0.0,
        "rounds": len(rounds),
        "seconds": time.perf_counter() - started,
    }


def plan(clip: dict[str, float]) -> list[tuple[str, int, list[str]]]:
    """(label, clients, overrides) in the order that answers the questions first."""

    def client_level(strategy: str, epsilon: float, trainable: str = "all") -> list[str]:
        return [
            f"strategy.name={strategy}",
            "privacy.level=client",
            f"privacy.target_epsilon={epsilon}",
            f"privacy.clip_norm={clip[trainable]:.6g}",
        ]

    example = ["privacy.level=example", "privacy.clip_norm=1.0"]
    runs = [("fedavg ε=∞", 100, ["strategy.name=fedavg"])]
    runs += [(f"fedavg client ε={e:g}", 100, client_level("fedavg", e)) for e in (3.0, 8.0, 1.0)]
    runs += [("ffa_lora ε=∞", 100, ["strategy.name=ffa_lora"])]
    runs += [("ffa_lora client ε=3", 100, client_level("ffa_lora", 3.0, "lora_B"))]
    runs += [("fedavg example ε=3", 100, [*example, "privacy.target_epsilon=3"])]
    runs += [(f"fedavg client ε=3, N={n}", n, client_level("fedavg", 3.0)) for n in (50, 200)]
    runs += [
        (f"ffa_lora client ε={e:g}", 100, client_level("ffa_lora", e, "lora_B")) for e in (8.0, 1.0)
    ]
    runs += [
        (f"fedavg example ε={e:g}", 100, [*example, f"privacy.target_epsilon={e}"])
        for e in (8.0, 1.0)
    ]
    return runs


def noise_to_signal(out: Path) -> str:
    """Computed, not trained: z at ε = 3 and the noise per coordinate against the update's.

    A clipped update of norm C spread over d coordinates moves each by about C/√d; the noised
    mean adds z·C/m to each. Their ratio z·√d/m says how many clients a round needs.
    """
    from safetensors.torch import load_file

    from fedit.privacy.accountant import Sampling, calibrate_noise, repeated, round_event
    from fedit.privacy.plan import default_delta

    adapter = next(out.glob("*/global_adapter/adapter_model.safetensors"))
    d = sum(t.numel() for t in load_file(str(adapter)).values())
    lines = [
        f"| clients N | per round m (q = {CLIENTS_PER_ROUND_RATE}) | rounds | "
        "z at ε = 3, δ = min(1e-5, 1/N^1.1) | "
        "noise / signal per coordinate z·√d/m |",
        "|---|---|---|---|---|",
    ]
    for num_clients in (100, 1_000, 10_000, 100_000, 1_000_000):
        for rounds in (3, 100):
            sampling = Sampling("poisson", num_clients, rate=CLIENTS_PER_ROUND_RATE)
            delta = default_delta(num_clients)
            z = calibrate_noise(
                lambda z, s=sampling, r=rounds: repeated(round_event(s, z), r),
                3.0,
                delta,
                "rdp",
                sampling.relation,
            )
            m = sampling.expected_size
            lines.append(
                f"| {num_clients:,} | {m:,.0f} | {rounds} | {z:.3f} | {z * d**0.5 / m:.3g} |"
            )
    return f"d = {d:,} trained LoRA coordinates (fedavg, r = 16).\n\n" + "\n".join(lines)


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(results: list[dict]) -> str:
    header = "run | clients (per round) | ε | δ | z | C | accuracy | loss | min"
    lines = ["| " + header + " |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        epsilon = "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        delta = "–" if r.get("delta") is None else f"{r['delta']:.0e}"
        lines.append(
            f"| {r['label']} | {r['clients']} ({r['per_round']:.1f}) | {epsilon} | {delta} | "
            f"{_cell(r['z'], 2)} | {_cell(r['clip'], 4)} | **{r['accuracy']:.3f}** | "
            f"{r['loss']:.3f} | {r['seconds'] / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output-dir", default="runs/bench_privacy")
    parser.add_argument("--resume", action="store_true", help="keep the runs in results.json")
    parser.add_argument("--max-minutes", type=float, default=25.0, help="stop starting runs after")
    parser.add_argument(
        "--report-only", action="store_true", help="write the section from results.json"
    )
    args = parser.parse_args()
    out = ROOT / args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    saved = json.loads(results_file.read_text()) if args.resume and results_file.is_file() else {}
    started = time.perf_counter()
    if "measure" not in saved:
        saved["measure"] = measure(out)
        results_file.write_text(json.dumps(saved, indent=1))
    runs = saved.setdefault("runs", [])
    done = {r["label"] for r in runs}
    for label, num_clients, extra in plan(saved["measure"]["clip"]):
        if label in done or args.report_only:
            continue
        if (time.perf_counter() - started) / 60 > args.max_minutes:
            print(f"== stopping before {label}: --max-minutes reached", flush=True)
            break
        print(f"== {label}", flush=True)
        slug = label.replace(" ", "_").replace(",", "").replace("=", "").replace("∞", "inf")
        runs.append(run(label, num_clients, out / slug, extra))
        results_file.write_text(json.dumps(saved, indent=1))
    times = saved["measure"]["times"]
    base, clipping, per_example = (statistics.median(times[k]) for k in times)
    cost = (
        "Time of one client's round (1 local step of 4 examples, SmolLM2-135M), median of 3 "
        f"interleaved repeats: no DP {base:.2f} s; client-level clipping {clipping:.2f} s "
        f"(**{clipping / base:.2f}x**); example-level per-example gradients (opacus) "
        f"{per_example:.2f} s (**{per_example / base:.2f}x**). Raw seconds: "
        + json.dumps({k: [round(t, 2) for t in v] for k, v in times.items()})
        + f". Clip norms C (median update norm of 3 clients): all LoRA tensors "
        f"{saved['measure']['clip']['all']:.4g}, B only {saved['measure']['clip']['lora_B']:.4g}."
    )
    body = (
        "Scaled down from issue 12 (see docs/privacy.md): 100 clients of 10 synthetic examples, "
        f"Poisson selection at rate {CLIENTS_PER_ROUND_RATE}, 3 rounds of 1 local step of 4 "
        "examples, lr 3e-3, "
        "accuracy (exact match) and loss on 18 held-out examples after the last round; one run "
        "per row, same seed. Every noise, DP-SGD batch and client-level selection is drawn "
        "from secret entropy (fedit/privacy/randomness.py), so a rerun draws other noise. "
        "Client level adds the noise at the server; ε is the accountant's (RDP) after the "
        "last round, calibrated to the target before round 1 at the default δ = "
        "min(1e-5, 1/N^1.1). Example level: DP-SGD with C = 1, ε is the largest over "
        "clients.\n\n"
        + table(runs)
        + "\n\n"
        + cost
        + "\n\nHow many clients client-level DP needs (the accountant only, no training): "
        + noise_to_signal(out)
    )
    record("privacy", "Differential privacy: accuracy against ε, and its cost", body)


if __name__ == "__main__":
    main()
