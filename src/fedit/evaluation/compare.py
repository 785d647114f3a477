"""``fedit compare CONFIG``: the FedIT paper's experiment in one command, on one data split.

1. **base**: the base model, no adapter (and **start**, the ``model.adapter`` a run began from);
2. **local-c** for k chosen clients: trained only on client c's data (``evaluation.baselines``);
3. **fedit**: the global adapter of the federated run (run, resumed, or reused if complete);
4. **centralized**: all training data pooled, with FedIT's total number of steps.

Every model is scored on the same ``compare.suites`` (the judge suites only when
``eval.judge.base_url`` is set). Outputs go to ``output_dir/compare/``: ``report.md`` (one row
per model, one column per category and overall), one bar chart per suite, ``results.json``,
and the baselines' PEFT adapters under ``adapters/``.

Example:
    fedit compare configs/quickstart.yaml
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.config import Config, ConfigError, save_config
from fedit.data.prepare import prepare_data
from fedit.evaluation.baselines import (
    Stint,
    choose_local_clients,
    pooled_schedule,
    step_schedule,
    train_schedule,
)
from fedit.evaluation.compare_report import write_compare_report
from fedit.evaluation.compare_tracking import fedit_tracking, log_models
from fedit.evaluation.per_client import score_clients
from fedit.evaluation.runner import LoadedModel, evaluate_suites, grade_judge_suites
from fedit.evaluation.suites import Suite, load_suites
from fedit.experiment import RunOutcome, Setup, load_setup, run_experiment
from fedit.io import atomic_write_json, atomic_write_text
from fedit.model.lora import load_adapter_state, set_adapter_state
from fedit.server.checkpoint import RunDir
from fedit.server.global_model import GlobalModel
from fedit.server.observer import RunObserver
from fedit.tracking import Tracking
from fedit.types import AdapterState

log = logging.getLogger(__name__)

BASELINE_MARKER = "baseline.json"  # beside a baseline's adapter: how it was trained


@dataclass
class Contender:
    """One model in the comparison."""

    name: str
    description: str
    steps: int
    state: AdapterState | None  # None: the base model, adapters off
    # A personalized row (compare.personalization): client id (str) -> that client's adapter,
    # scored only on each client's own test share
    states: dict[str, AdapterState] | None = None


@dataclass
class CompareOutcome:
    """What ``run_compare`` wrote."""

    compare_dir: Path
    report: Path
    results: dict[str, dict[str, dict[str, Any]]]
    table_text: str
    seconds: float
    phases: dict[str, float]


def run_compare(
    cfg: Config, observer: RunObserver | None = None, study_dir: Path | None = None
) -> CompareOutcome:
    """Train what is missing, score every model on every suite, and write the report.

    ``study_dir``: the study a seed's comparison belongs to (``compare.seeds``); it names the
    group that ``report_to`` logs every model to. Default: this comparison's ``output_dir``.
    """
    study_dir = study_dir or Path(cfg.output_dir)
    with fedit_tracking(cfg, study_dir) as tracking:
        return _compare(cfg, observer or RunObserver(), study_dir, tracking)


def _compare(
    cfg: Config, observer: RunObserver, study_dir: Path, tracking: Tracking
) -> CompareOutcome:
    started = time.perf_counter()
    # Bad suite files and an unreachable judge fail here, before anything is trained.
    suites = _judge_or_skip(load_suites(cfg.compare.suites, cfg, "compare.suites"), cfg)
    if cfg.engine in ("flower", "flower-simulation"):
        fedit_run = _finished_flower_run(cfg)
        setup = load_setup(cfg, prepare_data(cfg))
    else:
        # FedIT's setup (base model, LoRA init, tokenized clients) is the baselines' too.
        fedit_run = run_experiment(reusable(cfg), observer, tracking=tracking)
        assert fedit_run.setup is not None  # run_experiment always loads one
        setup = fedit_run.setup
    phases = {"fedit": time.perf_counter() - started}
    compare_dir = fedit_run.run_dir / "compare"
    atomic_write_text(compare_dir / "config.yaml", save_config(cfg))  # for fedit serve / eval
    steps = [setup.local_steps(client) for client in range(setup.num_clients)]
    schedule = step_schedule(fedit_run.history, steps)
    fedit_state = load_adapter_state(fedit_run.run_dir / "global_adapter")
    contenders = [Contender("base", "the base model, no adapter", 0, None)]
    if cfg.model.adapter:  # DPO's usual start: the instruction-tuned adapter everyone begins at
        start = setup.server.initial_state()
        contenders.append(Contender("start", f"model.adapter {cfg.model.adapter}", 0, start))
    contenders += _local_contenders(cfg, setup, schedule, observer)
    method = "FedDPO" if cfg.train.objective == "dpo" else "FedIT"
    contenders.append(
        Contender(
            "fedit",
            f"{method} global adapter: {cfg.federation.num_clients} clients, "
            f"{cfg.federation.rounds} rounds, {cfg.strategy.name}",
            sum(s.steps for stints in schedule.values() for s in stints),
            fedit_state,
        )
    )
    if cfg.compare.centralized:
        contenders.append(_centralized(cfg, setup, schedule, observer))
    phases["baselines"] = time.perf_counter() - started - phases["fedit"]
    results = _score(cfg, setup.server, contenders, suites, observer)
    per_client = None
    personal = _personal_contenders(cfg, setup, fedit_state, observer)
    if any(setup.data.client_test):  # data.client_test_fraction: who gains from federation
        loaded = LoadedModel(setup.server.model, setup.server.tokenizer, has_adapter=True)
        per_client = score_clients(
            cfg, loaded, contenders + personal, setup.data.client_test, observer
        )
    seconds = time.perf_counter() - started
    phases["scoring"] = seconds - phases["fedit"] - phases["baselines"]
    stored = _jsonable(results, contenders, phases) | {"per_client": per_client}
    stored["personalization"] = [
        {"name": c.name, "description": c.description, "steps": c.steps} for c in personal
    ]
    atomic_write_json(compare_dir / "results.json", stored)
    report, table_text = write_compare_report(
        compare_dir, cfg, contenders, results, setup.data.table, fedit_run.history, per_client
    )
    log_models(cfg, study_dir, tracking, fedit_run, results, compare_dir)
    return CompareOutcome(compare_dir, report, results, table_text, seconds, phases)


def _personal_contenders(
    cfg: Config, setup: Setup, fedit_state: AdapterState, observer: RunObserver
) -> list[Contender]:
    """``compare.personalization``'s rows (``evaluation.personal_rows``), per client only."""
    from fedit.evaluation.personal_rows import DESCRIPTIONS, finetune_states, method_run_states

    rows = []
    for name in cfg.compare.personalization:
        if name == "finetune":
            states, steps = finetune_states(cfg, setup, fedit_state, observer)
        else:
            states, steps = method_run_states(cfg, name, setup, observer)
        rows.append(Contender(name, DESCRIPTIONS[name], steps, None, states))
    return rows


def _judge_or_skip(suites: list[Suite], cfg: Config) -> list[Suite]:
    """Judge suites run only with a judge configured; then it must be reachable now."""
    if not any(suite.spec.kind == "judge" for suite in suites):
        return suites
    if cfg.eval.judge.base_url is None:
        log.info("no judge configured (eval.judge.base_url): skipping the judge suites")
        return [suite for suite in suites if suite.spec.kind != "judge"]
    from fedit.evaluation.runner import check_judge

    check_judge(cfg)
    return suites


def reusable(cfg: Config) -> Config:
    """Reuse a complete (or resumable) FedIT run in output_dir with the same training settings;
    start one otherwise. ``overwrite=true`` always starts afresh."""
    run_dir = RunDir(cfg.output_dir)
    if cfg.overwrite or not run_dir.is_run():
        return cfg
    try:
        run_dir.check_resumable(cfg)
    except ConfigError as err:
        raise ConfigError(
            f"output_dir: {cfg.output_dir} holds a different run ({err}); "
            "set overwrite=true or another output_dir"
        ) from None
    log.info("reusing the FedIT run in %s", cfg.output_dir)
    return dataclasses.replace(cfg, resume=True)


def _finished_flower_run(cfg: Config) -> RunOutcome:
    """``engine: flower``: compare scores the finished Flower run in output_dir and trains the
    baselines in-process on the coordinator's copy of the data (simulation-style sites only:
    real sites' data never reaches the coordinator)."""
    run_dir = RunDir(cfg.output_dir)
    adapter = run_dir.path / "global_adapter"
    point = run_dir.resume_point() if run_dir.is_run() else None
    if point is None or point.next_round <= cfg.federation.rounds or not adapter.is_dir():
        raise ConfigError(
            f"engine={cfg.engine}: fedit compare needs the finished Flower run in "
            f"{cfg.output_dir}; run `fedit {'flower ' * (cfg.engine == 'flower')}run CONFIG` "
            "first (docs/deploy.md)"
        )
    run_dir.check_resumable(cfg)
    log.info("reusing the Flower run in %s", cfg.output_dir)
    return RunOutcome(run_dir.path, point.history, run_dir.path / "report.md", 0.0)


def _local_contenders(
    cfg: Config, setup: Setup, schedule: dict[int, list[Stint]], observer: RunObserver
) -> list[Contender]:
    contenders = []
    for client in choose_local_clients(cfg, schedule):
        stints = schedule[client]
        log.info(
            "Local-k: client %d alone, %d steps over rounds %s",
            client,
            sum(s.steps for s in stints),
            [s.server_round for s in stints],
        )
        state, steps = _train_or_reuse(
            f"local-{client}", setup, setup.client_data[client], cfg, stints, client, observer
        )
        examples = len(setup.client_data[client])
        contenders.append(
            Contender(
                f"local-{client}", f"client {client}'s {examples} examples only", steps, state
            )
        )
    return contenders


def _centralized(
    cfg: Config, setup: Setup, schedule: dict[int, list[Stint]], observer: RunObserver
) -> Contender:
    pooled = [example for client in setup.client_data for example in client]
    stints = pooled_schedule(schedule)
    log.info("Centralized: %d pooled examples, %d steps", len(pooled), sum(s.steps for s in stints))
    # A client id no FedIT client has, so its batch order is its own.
    state, steps = _train_or_reuse(
        "centralized", setup, pooled, cfg, stints, setup.num_clients, observer
    )
    return Contender("centralized", f"all {len(pooled)} training examples pooled", steps, state)


def _train_or_reuse(
    name: str,
    setup: Setup,
    examples: list[Any],
    cfg: Config,
    stints: list[Stint],
    client_id: int,
    observer: RunObserver,
) -> tuple[AdapterState, int]:
    """Train a baseline and save it to ``compare/adapters/<name>`` at once, or load it from
    there when an earlier (perhaps crashed) compare trained it with the same settings and
    schedule, so a re-run never trains it twice."""
    folder = Path(cfg.output_dir) / "compare" / "adapters" / name
    recipe = _recipe(cfg, stints, client_id)
    marker = folder / BASELINE_MARKER
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == recipe:
        log.info("%s: reusing %s", name, folder)
        return load_adapter_state(folder), sum(stint.steps for stint in stints)
    observer.on_baseline_start(name, sum(stint.steps for stint in stints))
    state, steps = train_schedule(
        setup.server.model,
        examples,
        cfg,
        stints,
        setup.server.initial_state(),
        client_id,
        progress=_progress(observer, sum(stint.steps for stint in stints)),
    )
    setup.server.save_adapter(state, folder)
    atomic_write_json(marker, recipe)
    return state, steps


def _progress(observer: RunObserver, total: int) -> Callable[[int, int, float], None]:
    """Step progress across all of a baseline's stints (each stint counts its steps from 1)."""
    done = [0, 0]  # steps of finished stints, last step seen in the current one

    def on_step(step: int, stint_steps: int, loss: float) -> None:
        if step <= done[1]:  # a new stint started (steps rise within one)
            done[0] += done[1]
        done[1] = step
        observer.on_step(done[0] + step, total, loss)

    return on_step


def _recipe(cfg: Config, stints: list[Stint], client_id: int) -> dict[str, Any]:
    """Everything a baseline's weights depend on: the training settings and its schedule."""
    settings = cfg.to_dict()
    never_trained = ("eval", "compare", "resume", "overwrite", "output_dir", "engine", "flower")
    for key in (*never_trained, "report_to"):
        settings.pop(key, None)
    return {
        "client_id": client_id,
        "stints": [dataclasses.asdict(stint) for stint in stints],
        "settings": settings,
    }


def _score(
    cfg: Config,
    server: GlobalModel,
    contenders: list[Contender],
    suites: list[Suite],
    observer: RunObserver,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every contender on every suite; then the judge: single grades, and FedIT pairwise
    against every other model."""
    loaded = LoadedModel(server.model, server.tokenizer, has_adapter=True)
    results = {}
    for contender in contenders:
        observer.on_eval_start(contender.name)
        if contender.state is not None:
            set_adapter_state(server.model, contender.state)
        results[contender.name] = evaluate_suites(
            loaded, cfg, suites, contender.state is not None, observer, contender.name
        )
        first = next(iter(results[contender.name].values()), {})
        observer.on_eval_end(contender.name, first)
    if any(suite.spec.kind == "judge" for suite in suites):
        _judge(cfg, results, suites)
    return results


def _judge(cfg: Config, results: dict[str, Any], suites: list[Suite]) -> None:
    mode = cfg.eval.judge.mode
    single_only = dataclasses.replace(
        cfg,
        eval=dataclasses.replace(
            cfg.eval, judge=dataclasses.replace(cfg.eval.judge, mode="single")
        ),
    )
    for name, model_results in results.items():
        if name == "fedit":
            opponents = {other: r for other, r in results.items() if other != "fedit"}
            grade_judge_suites(model_results, suites, cfg, opponents)
        elif mode in ("single", "both"):
            grade_judge_suites(model_results, suites, single_only)


def _jsonable(
    results: dict[str, dict[str, dict[str, Any]]],
    contenders: list[Contender],
    phases: dict[str, float],
) -> dict[str, Any]:
    return {
        "models": [
            {"name": c.name, "description": c.description, "steps": c.steps} for c in contenders
        ],
        "seconds": phases,
        "results": results,
    }
