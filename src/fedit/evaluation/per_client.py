"""Who benefits from federation: every model scored on every client's own test share.

With ``data.client_test_fraction`` > 0 each client keeps a share of its data out of training
(``data/partition.split_client_tests``). ``fedit compare`` then scores every model on each
client's share, and its report shows a client x model table, the mean, worst client and
standard deviation per model, the share of clients each model helps compared with their own
Local model and with global FedIT (only clients that have a Local model: set
``compare.num_local`` to the number of clients for all), and a plot of each client's gain over
its own Local model against how far its data sit from the global mix (its Jensen–Shannon
divergence, ``data/heterogeneity.py``), one series per model. ``local`` is the composite row:
client c scored by ``local-<c>``, its own Local model.

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
        label = f"{contender.name} per client"
        if contender.states is not None:  # a personalized row: each client's own adapter
            results = {}
            for suite in suites:
                set_adapter_state(loaded.model, contender.states[suite.spec.name.split("-", 1)[1]])
                results.update(evaluate_suites(loaded, cfg, [suite], True, observer, label))
        else:
            if contender.state is not None:
                set_adapter_state(loaded.model, contender.state)
            results = evaluate_suites(
                loaded, cfg, suites, contender.state is not None, observer, label
            )
        out[contender.name] = {
            name.split("-", 1)[1]: {
                "accuracy": result["accuracy"],
                "loss": result.get("loss", float("nan")),
                "num_examples": result["num_examples"],
            }
            for name, result in results.items()
        }
    return out


LOCAL = "local"  # the composite row: each client scored by its own Local model
FEDIT = "fedit"
_UNPLOTTED = ("base", LOCAL)  # no gain series: the base model, and Local against itself

Scores = dict[str, dict[str, dict[str, float]]]  # model -> client id (str) -> metric -> value


def by_role(per_client: Scores) -> Scores:
    """The models as rows: every model but the Local-k ones, then the composite ``local``."""
    rows = {m: clients for m, clients in per_client.items() if not m.startswith("local-")}
    own = {
        c: per_client[f"local-{c}"][c]
        for c in sorted({c for clients in per_client.values() for c in clients}, key=int)
        if f"local-{c}" in per_client and c in per_client[f"local-{c}"]
    }
    if own:
        rows[LOCAL] = own
    return rows


def better(metric: str, a: float, b: float) -> bool:
    """Whether ``a`` is a better score than ``b`` (lower loss, higher anything else)."""
    return a < b if metric == "loss" else a > b


def fairness(per_client: Scores, metric: str) -> dict[str, Any]:
    """Per row (``by_role``): mean, worst client, population std over clients; and ``helps``:
    per model, how many clients it serves better than their own Local model (``vs_local``)
    and than global FedIT (``vs_fedit``), over the clients both have."""
    rows = by_role(per_client)
    summary: dict[str, Any] = {}
    for model, clients in rows.items():
        values = np.array([scores[metric] for scores in clients.values()])
        worst = float(values.max() if metric == "loss" else values.min())
        summary[model] = {"mean": float(values.mean()), "worst": worst, "std": float(values.std())}
    helps: dict[str, dict[str, dict[str, int]]] = {}
    for model, clients in rows.items():
        if model == LOCAL:
            continue
        helps[model] = {}
        for name, other in ((LOCAL, rows.get(LOCAL, {})), (FEDIT, rows.get(FEDIT, {}))):
            if model == name or not other:
                continue
            shared = [c for c in clients if c in other]
            won = [better(metric, clients[c][metric], other[c][metric]) for c in shared]
            helps[model][f"vs_{name}"] = {"clients": len(won), "helped": int(sum(won))}
    summary["helps"] = helps
    summary["fedit_helps"] = helps.get(FEDIT, {}).get("vs_local", {"clients": 0, "helped": 0})
    return summary


def gains(per_client: Scores, metric: str, model: str = FEDIT) -> dict[str, float]:
    """client -> ``model`` minus the client's own Local model, where it has one."""
    rows = by_role(per_client)
    scores, own = rows.get(model, {}), rows.get(LOCAL, {})
    return {c: scores[c][metric] - own[c][metric] for c in scores if c in own}


def _helps_line(model: str, metric: str, helps: dict[str, dict[str, int]]) -> str | None:
    parts = [
        f"{h['helped']} of {h['clients']} clients ({100 * h['helped'] / h['clients']:.0f}%) "
        + ("compared with their own Local model" if key == "vs_local" else "compared with FedIT")
        for key, h in helps.items()
        if h["clients"]
    ]
    if not parts:
        return None
    return f"- {model} serves better " + " and ".join(parts) + f" on {metric}."


def per_client_section(
    per_client: dict[str, dict[str, dict[str, float]]], table: dict[str, Any], out: Path
) -> list[str]:
    """The report's "Per client" section (and its plot, when FedIT has Local models to beat)."""
    from fedit.reporting.plots import plot_client_gains

    rows = by_role(per_client)
    models = list(rows)
    clients = sorted({c for scores in per_client.values() for c in scores}, key=int)
    lines = ["## Per client: each model on each client's own test share", ""]
    if LOCAL in rows:
        lines += [
            f"`{LOCAL}` is each client's own Local model (`local-<c>` on client c); the Local "
            "models' scores on other clients are in `results.json` (`per_client`).",
            "",
        ]
    for metric in METRICS:
        summary = fairness(per_client, metric)
        direction = "lower" if metric == "loss" else "higher"
        lines += [f"**{metric}** ({direction} is better)", ""]
        lines.append("| client | " + " | ".join(models) + " |")
        lines.append("|---|" + "---:|" * len(models))
        for c in clients:
            cells = [f"{rows[m][c][metric]:.3f}" if c in rows[m] else "–" for m in models]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        for stat in ("mean", "worst", "std"):
            cells = [f"{summary[m][stat]:.3f}" for m in models]
            lines.append(f"| *{stat}* | " + " | ".join(cells) + " |")
        helped = [_helps_line(m, metric, h) for m, h in summary["helps"].items()]
        if any(helped):
            lines += ["", *[line for line in helped if line]]
        lines.append("")
    distance = {
        str(c["client"]): c["js_divergence"]
        for c in table.get("heterogeneity", {}).get("clients", [])
        if c["js_divergence"] is not None
    }
    series = {
        model: {
            c: (distance[c], g)
            for c, g in gains(per_client, "accuracy", model).items()
            if c in distance
        }
        for model in models
        if model not in _UNPLOTTED
    }
    series = {model: points for model, points in series.items() if points}
    if series:
        plot_client_gains(series, out / PLOT)
        lines += [
            f"![Each model's accuracy gain over each client's own model against its divergence]"
            f"({PLOT})",
            "",
        ]
    return lines
