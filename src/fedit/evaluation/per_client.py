"""Who benefits from federation: every model scored on every client's own test share.

With ``data.client_test_fraction`` > 0 each client keeps a share of its data out of training
(``data/partition.split_client_tests``). ``fedit compare`` then scores every model on each
client's share, and its report shows a client x model table, the mean, worst client and
standard deviation per model, the share of clients FedIT helps compared with their own Local
model (only clients that have one: set ``compare.num_local`` to the number of clients for all),
and a plot of each client's gain from federation against how far its data sit from the global
mix (its Jensen–Shannon divergence, ``data/heterogeneity.py``).

Example:
    per_client = score_clients(cfg, loaded, contenders, client_test, observer)
    lines = per_client_section(per_client, partition_table, out_dir)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedit.config import Config
from fedit.evaluation.runner import LoadedModel, evaluate_suites
from fedit.evaluation.suites import InstructionSuite, Suite, SuiteSpec
from fedit.model.lora import set_adapter_state
from fedit.server.observer import RunObserver
from fedit.types import Example

METRICS = ("accuracy", "loss")
PLOT = "per_client_gain.png"


def score_clients(
    cfg: Config,
    loaded: LoadedModel,
    contenders: list[Any],
    client_test: list[list[Example]],
    observer: RunObserver,
) -> dict[str, dict[str, dict[str, float]]]:
    """model -> client id (str) -> {"accuracy", "loss", "num_examples"}."""
    suites: list[Suite] = [
        InstructionSuite(SuiteSpec(f"client-{client}", "heldout"), examples)
        for client, examples in enumerate(client_test)
        if examples
    ]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for contender in contenders:
        if contender.state is not None:
            set_adapter_state(loaded.model, contender.state)
        label = f"{contender.name} per client"
        results = evaluate_suites(loaded, cfg, suites, contender.state is not None, observer, label)
        out[contender.name] = {
            name.split("-", 1)[1]: {
                "accuracy": result["accuracy"],
                "loss": result.get("loss", float("nan")),
                "num_examples": result["num_examples"],
            }
            for name, result in results.items()
        }
    return out


def fairness(per_client: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, Any]:
    """Per model: mean, worst client, population std over clients; and FedIT's help count."""
    lower = metric == "loss"
    summary: dict[str, Any] = {}
    for model, clients in per_client.items():
        values = np.array([scores[metric] for scores in clients.values()])
        worst = float(values.max() if lower else values.min())
        summary[model] = {"mean": float(values.mean()), "worst": worst, "std": float(values.std())}
    fedit = per_client.get("fedit", {})
    helped = [
        (fedit[c][metric] < own[c][metric]) if lower else (fedit[c][metric] > own[c][metric])
        for c in fedit
        if (own := per_client.get(f"local-{c}")) and c in own
    ]
    summary["fedit_helps"] = {"clients": len(helped), "helped": int(sum(helped))}
    return summary


def gains(per_client: dict[str, dict[str, dict[str, float]]], metric: str) -> dict[str, float]:
    """client -> FedIT minus the client's own Local model, where it has one."""
    fedit = per_client.get("fedit", {})
    return {
        c: fedit[c][metric] - own[c][metric]
        for c in fedit
        if (own := per_client.get(f"local-{c}")) and c in own
    }


def per_client_section(
    per_client: dict[str, dict[str, dict[str, float]]], table: dict[str, Any], out: Path
) -> list[str]:
    """The report's "Per client" section (and its plot, when FedIT has Local models to beat)."""
    from fedit.reporting.plots import plot_client_gains

    models = list(per_client)
    clients = sorted({c for scores in per_client.values() for c in scores}, key=int)
    lines = ["## Per client: each model on each client's own test share", ""]
    for metric in METRICS:
        summary = fairness(per_client, metric)
        better = "lower" if metric == "loss" else "higher"
        lines += [f"**{metric}** ({better} is better)", ""]
        lines.append("| client | " + " | ".join(models) + " |")
        lines.append("|---|" + "---:|" * len(models))
        for c in clients:
            cells = [
                f"{per_client[m][c][metric]:.3f}" if c in per_client[m] else "–" for m in models
            ]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        for stat in ("mean", "worst", "std"):
            cells = [f"{summary[m][stat]:.3f}" for m in models]
            lines.append(f"| *{stat}* | " + " | ".join(cells) + " |")
        helps = summary["fedit_helps"]
        if helps["clients"]:
            lines += [
                "",
                f"FedIT helps {helps['helped']} of the {helps['clients']} clients that have their "
                f"own Local model ({100 * helps['helped'] / helps['clients']:.0f}%) on {metric}.",
            ]
        lines.append("")
    distance = {
        str(c["client"]): c["js_divergence"]
        for c in table.get("heterogeneity", {}).get("clients", [])
        if c["js_divergence"] is not None
    }
    gain = gains(per_client, "accuracy")
    points = {c: (distance[c], g) for c, g in gain.items() if c in distance}
    if points:
        plot_client_gains(points, out / PLOT)
        lines += [
            f"![FedIT's accuracy gain over each client's own model against its divergence]({PLOT})",
            "",
        ]
    return lines
