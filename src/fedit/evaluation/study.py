"""``fedit compare`` with ``compare.seeds``: the whole study once per seed, then intervals.

Each seed is a complete ``fedit compare`` in ``output_dir/seed-<s>/`` with ``seed = s``: its own
data split, partition, LoRA initialisation, client selection and training, so the spread across
seeds is everything a second seed can change. A seed whose comparison finished with the same
settings is reused on a re-run (``seed-<s>/compare/study_seed.json`` records them); inside a
seed, a finished FedIT run and finished baselines are reused as ``fedit compare`` always does.

``summarize`` turns the per-seed results into the numbers of ``output_dir/study/``:

- every model's mean and 95% t-interval over seeds, per metric, overall and per category;
- FedIT's paired difference from each other model (base, each Local-k by rank, the best Local-k
  of each seed, Centralized): on per-example scores with the two-level bootstrap over seeds x
  test examples; on loss (a per-token mean, not per example) with a t-interval over per-seed
  differences. A difference counts only when its interval excludes zero; otherwise the summary
  says how large a study would resolve it (``evaluation/intervals.py``);
- with ``data.client_test_fraction``, who gains on each client's own test share, over seeds
  (``evaluation/per_client_study.py``).

Local-k models are matched across seeds by rank (``local#1`` is the client FedIT trained most in
that seed), since different seeds pick different clients.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fedit.config import Config, changed_settings, save_config
from fedit.evaluation.compare import run_compare
from fedit.evaluation.compare_report import reference_lines
from fedit.evaluation.intervals import as_json, paired_bootstrap, resolving_size, t_interval
from fedit.evaluation.per_client_study import summarize_clients
from fedit.io import atomic_write_json, read_jsonl
from fedit.server.observer import RunObserver

log = logging.getLogger(__name__)

SEED_MARKER = "study_seed.json"
PAIRED_METRICS = ("accuracy", "token_f1", "rouge_l")
LOWER_IS_BETTER = {"loss", "perplexity"}
BEST_LOCAL = "best local"


@dataclass
class StudyOutcome:
    """What ``run_study`` wrote and found."""

    study_dir: Path
    report: Path
    summary: dict[str, Any]
    seconds: float


def seed_config(cfg: Config, seed: int) -> Config:
    """The single-seed comparison of ``seed``: its own seed and folder."""
    return dataclasses.replace(
        cfg,
        seed=seed,
        output_dir=str(Path(cfg.output_dir) / f"seed-{seed}"),
        compare=dataclasses.replace(cfg.compare, seeds=None),
    )


def run_study(cfg: Config, observer: RunObserver | None = None) -> StudyOutcome:
    """Run (or reuse) every seed's comparison, then write ``output_dir/study/``."""
    from fedit.evaluation.study_report import write_study_report

    started = time.perf_counter()
    observer = observer or RunObserver()
    assert cfg.compare.seeds, "run_study needs compare.seeds"
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in cfg.compare.seeds:
        one = seed_config(cfg, seed)
        marker = Path(one.output_dir) / "compare" / SEED_MARKER
        results = Path(one.output_dir) / "compare" / "results.json"
        recipe = {"seed": seed, "config": save_config(one)}
        if not cfg.overwrite and results.is_file() and _same_recipe(_read(marker), seed, one):
            log.info("seed %d: reusing the finished comparison in %s", seed, one.output_dir)
        else:
            marker.unlink(missing_ok=True)
            log.info("seed %d: comparing in %s", seed, one.output_dir)
            run_compare(one, observer, study_dir=Path(cfg.output_dir))
            atomic_write_json(marker, recipe)
        per_seed[seed] = json.loads(results.read_text(encoding="utf-8"))
    summary = summarize(per_seed)
    study_dir = Path(cfg.output_dir) / "study"
    atomic_write_json(study_dir / "results.json", summary)
    histories = [
        read_jsonl(Path(seed_config(cfg, s).output_dir) / "metrics.jsonl") for s in per_seed
    ]
    references = reference_lines([per_seed[s]["results"] for s in per_seed])
    report = write_study_report(study_dir, cfg, summary, histories, references)
    return StudyOutcome(study_dir, report, summary, time.perf_counter() - started)


def _same_recipe(saved: Any, seed: int, cfg: Config) -> bool:
    """Whether a seed's marker records ``seed`` and ``cfg``'s settings (a setting added to
    fedit since the marker was written counts at its default, as on resume)."""
    if not isinstance(saved, dict) or saved.get("seed") != seed:
        return False
    try:
        config = yaml.safe_load(saved.get("config") or "") or {}
    except yaml.YAMLError:
        return False
    return isinstance(config, dict) and not changed_settings(config, cfg)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def roles(models: list[dict[str, Any]]) -> dict[str, str]:
    """Role (the name used across seeds) -> this seed's model name; Local-k by rank."""
    out = {}
    locals_seen = 0
    for model in models:
        name = model["name"]
        if name.startswith("local-"):
            locals_seen += 1
            out[f"local#{locals_seen}"] = name
        else:
            out[name] = name
    return out


def summarize(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Means, intervals and FedIT's paired differences from each seed's ``results.json``."""
    seeds = sorted(per_seed)
    role_maps = {seed: roles(per_seed[seed]["models"]) for seed in seeds}
    common = [r for r in role_maps[seeds[0]] if all(r in m for m in role_maps.values())]
    suites: dict[str, Any] = {}
    for suite in per_seed[seeds[0]]["results"]["fedit"]:
        by_seed = {
            seed: {role: per_seed[seed]["results"][role_maps[seed][role]][suite] for role in common}
            for seed in seeds
        }
        suites[suite] = {
            "models": _model_intervals(by_seed, common),
            "paired": _paired(by_seed, common),
        }
    return {
        "seeds": seeds,
        "models": common,
        "local_clients": {
            str(seed): {r: n for r, n in role_maps[seed].items() if r.startswith("local#")}
            for seed in seeds
        },
        "num_test": {str(seed): _num_test(per_seed[seed]) for seed in seeds},
        "seconds": {str(seed): per_seed[seed].get("seconds", {}) for seed in seeds},
        "suites": suites,
        "per_client": summarize_clients(per_seed),
    }


def _num_test(results: dict[str, Any]) -> int | None:
    fedit = results["results"]["fedit"]
    return next((r["num_examples"] for r in fedit.values() if "num_examples" in r), None)


def _scalar_metrics(result: dict[str, Any]) -> list[str]:
    return [
        key
        for key, value in result.items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and key not in ("seconds", "num_examples", "num_tokens", "perplexity")
        and f"{key}_by_category" in result
    ]


def _model_intervals(
    by_seed: dict[int, dict[str, dict[str, Any]]], common: list[str]
) -> dict[str, Any]:
    """role -> metric -> {"overall": interval, "by_category": {category: interval}}."""
    first = by_seed[min(by_seed)]["fedit"]
    out: dict[str, Any] = {}
    for role in common:
        out[role] = {}
        for metric in _scalar_metrics(first):
            values = [by_seed[seed][role][metric] for seed in by_seed]
            categories = sorted(first[f"{metric}_by_category"])
            out[role][metric] = {
                "overall": as_json(t_interval(values)),
                "by_category": {
                    c: as_json(
                        t_interval(
                            [
                                by_seed[s][role][f"{metric}_by_category"][c]
                                for s in by_seed
                                if c in by_seed[s][role][f"{metric}_by_category"]
                            ]
                        )
                    )
                    for c in categories
                },
            }
    return out


def _best_local(runs: dict[str, dict[str, Any]], metric: str) -> str | None:
    candidates = [r for r in runs if r.startswith("local#") and metric in runs[r]]
    if not candidates:
        return None
    sign = -1 if metric in LOWER_IS_BETTER else 1
    return max(candidates, key=lambda r: sign * runs[r][metric])


def _paired(by_seed: dict[int, dict[str, dict[str, Any]]], common: list[str]) -> list[dict]:
    """FedIT minus each other model, per metric (the best Local-k chosen per seed and metric)."""
    first = by_seed[min(by_seed)]["fedit"]
    metrics = [m for m in PAIRED_METRICS if m in first.get("per_example", {})]
    if "loss" in first:
        metrics.append("loss")
    rows = []
    opponents = [r for r in common if r != "fedit"]
    locals_at = [i for i, r in enumerate(opponents) if r.startswith("local#")]
    if locals_at:  # "best local" leads the Local-k rows
        opponents.insert(locals_at[0], BEST_LOCAL)
    for opponent in opponents:
        for metric in metrics:
            diffs = []
            for runs in by_seed.values():
                other = _best_local(runs, metric) if opponent == BEST_LOCAL else opponent
                if other is None:
                    continue
                if metric == "loss":
                    diffs.append(np.array([runs["fedit"]["loss"] - runs[other]["loss"]]))
                else:
                    fedit = np.asarray(runs["fedit"]["per_example"][metric])
                    diffs.append(fedit - np.asarray(runs[other]["per_example"][metric]))
            if not diffs:
                continue
            if metric == "loss":
                interval = t_interval([float(d[0]) for d in diffs])
            else:
                interval = paired_bootstrap(diffs)
            better = -interval.mean if metric in LOWER_IS_BETTER else interval.mean
            verdict = "no significant difference"
            if interval.excludes_zero():
                verdict = "FedIT better" if better > 0 else "FedIT worse"
            row = {"opponent": opponent, "metric": metric, **as_json(interval)}
            row["verdict"] = verdict
            if verdict == "no significant difference" and metric != "loss":
                row["resolve"] = dataclasses.asdict(resolving_size(diffs))
            rows.append(row)
    return rows
