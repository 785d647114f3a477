"""Who gains, over seeds: the per-client scores of every seed's ``fedit compare`` as intervals.

Each seed's ``results.json`` holds ``per_client`` (``evaluation/per_client.py``): every model
on every client's own test share. Over ``compare.seeds`` this module gives, per row of
``per_client.by_role`` (the models, and ``local``: each client's own Local model) and metric:

- a t-interval over seeds of the mean over clients, of the worst client, and of the std;
- paired differences of every model from global FedIT and from ``local``:
  - **mean per-client score**: the two-level paired bootstrap over seeds x **clients**, on each
    seed's vector of per-client differences (the clients both models were scored on);
  - **worst client**: a t-interval over the per-seed differences of the worst clients (the
    worst client may be another client in each seed and for each model);
- ``lifts_worst``: the models whose worst client is better than both FedIT's and ``local``'s,
  with both worst-client intervals excluding zero. Nothing is called a lift on a mean alone.

Example:
    block = summarize_clients({42: results_42, 43: results_43})   # None without per_client
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedit.evaluation.intervals import (
    CLIENT_BOOTSTRAP_METHOD,
    as_json,
    paired_bootstrap,
    t_interval,
)
from fedit.evaluation.per_client import FEDIT, LOCAL, METRICS, Scores, by_role

STATS = ("mean", "worst", "std")


def _stats(clients: dict[str, dict[str, float]], metric: str) -> dict[str, float]:
    values = np.array([scores[metric] for scores in clients.values()])
    worst = values.max() if metric == "loss" else values.min()
    return {"mean": float(values.mean()), "worst": float(worst), "std": float(values.std())}


def _verdict(interval: Any, metric: str) -> str:
    if not interval.excludes_zero():
        return "no significant difference"
    gain = -interval.mean if metric == "loss" else interval.mean
    return "better" if gain > 0 else "worse"


def summarize_clients(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The ``per_client`` block of a study's summary, or None if no seed scored per client."""
    rows_by_seed: dict[int, Scores] = {
        seed: by_role(results["per_client"])
        for seed, results in sorted(per_seed.items())
        if results.get("per_client")
    }
    if not rows_by_seed:
        return None
    seeds = list(rows_by_seed)
    rows = [r for r in rows_by_seed[seeds[0]] if all(r in by for by in rows_by_seed.values())]
    models: dict[str, Any] = {}
    paired: list[dict[str, Any]] = []
    for metric in METRICS:
        per_seed_stats = {
            seed: {row: _stats(rows_by_seed[seed][row], metric) for row in rows} for seed in seeds
        }
        for row in rows:
            models.setdefault(row, {})[metric] = {
                stat: as_json(t_interval([per_seed_stats[s][row][stat] for s in seeds]))
                for stat in STATS
            }
        for row in rows:
            for other in (FEDIT, LOCAL):
                if row in (other, LOCAL) or other not in rows:
                    continue
                paired += _pair(rows_by_seed, per_seed_stats, row, other, metric)
    lifts = {metric: _lifts(rows, paired, metric) for metric in METRICS}
    return {
        "seeds": seeds,
        "clients": {str(s): len(rows_by_seed[s].get(FEDIT, {})) for s in seeds},
        "models": models,
        "paired": paired,
        "lifts_worst": lifts,
    }


def _pair(
    rows_by_seed: dict[int, Scores],
    per_seed_stats: dict[int, dict[str, dict[str, float]]],
    row: str,
    other: str,
    metric: str,
) -> list[dict[str, Any]]:
    """``row`` minus ``other`` on ``metric``: the mean per-client score and the worst client."""
    diffs = []
    for by in rows_by_seed.values():
        shared = [c for c in by[row] if c in by[other]]
        diffs.append(np.array([by[row][c][metric] - by[other][c][metric] for c in shared]))
    out = []
    if all(d.size for d in diffs):
        mean = paired_bootstrap(diffs, method=CLIENT_BOOTSTRAP_METHOD)
        out.append({"stat": "mean", **as_json(mean), "verdict": _verdict(mean, metric)})
    worst_diffs = [
        per_seed_stats[s][row]["worst"] - per_seed_stats[s][other]["worst"] for s in rows_by_seed
    ]
    worst = t_interval(worst_diffs)
    worst_row = {"stat": "worst", **as_json(worst), "verdict": _verdict(worst, metric)}
    worst_row["per_seed"] = worst_diffs  # three seeds make wide intervals: show each
    out.append(worst_row)
    return [{"model": row, "vs": other, "metric": metric, **r} for r in out]


def _lifts(rows: list[str], paired: list[dict[str, Any]], metric: str) -> list[str]:
    """The rows whose worst client beats both FedIT's and ``local``'s, both intervals clear."""
    opponents = {o for o in (FEDIT, LOCAL) if o in rows}
    lifted = []
    for row in rows:
        if row in (FEDIT, LOCAL) or not opponents:
            continue
        won = {
            p["vs"]
            for p in paired
            if p["model"] == row
            and p["metric"] == metric
            and p["stat"] == "worst"
            and p["verdict"] == "better"
        }
        if won == opponents:
            lifted.append(row)
    return lifted
