"""``fedit eval`` and ``fedit compare``: arguments and the glue to ``fedit.evaluation``.

Usage:
    fedit eval --adapter RUN/global_adapter --suite heldout [--suite mc:FILE ...]
    fedit eval --model smollm2-135m-instruct --config CONFIG --suite heldout --out DIR
    fedit compare CONFIG [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from rich.console import Console

from fedit.config import Config, ConfigError, config_from_dict

log = logging.getLogger(__name__)

# --judge-* flag -> eval.judge field
JUDGE_FLAGS = {
    "judge_base_url": "base_url",
    "judge_model": "model",
    "judge_api_key_env": "api_key_env",
    "judge_prompts": "prompts",
    "judge_mode": "mode",
    "judge_repeats": "repeats",
    "judge_concurrency": "concurrency",
    "judge_max_tokens": "max_tokens",
}


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="PEFT adapter folder (omit to score the base model)")
    parser.add_argument("--model", help="base model (default: the run's model.name)")
    parser.add_argument("--config", help="run config (default: the config.yaml next to --adapter)")
    parser.add_argument("--template", help="alpaca or chat (default: the run's data.template)")
    parser.add_argument(
        "--suite",
        action="append",
        required=True,
        metavar="[NAME=]KIND[:SOURCE]",
        help="repeatable: heldout, instructions:FILE|HUB_ID, preference[:FILE|HUB_ID], mc:FILE, "
        "gsm8k:FILE, "
        "judge:question.jsonl, lm_eval:TASK[,TASK...] (lm-eval task names or task.yaml files)",
    )
    parser.add_argument("--out", help="folder for eval/ (default: the run folder)")
    parser.add_argument("--batch-size", type=int, help="eval.batch_size")
    parser.add_argument("--max-new-tokens", type=int, help="eval.max_new_tokens (short answers)")
    parser.add_argument(
        "--judge-baseline",
        default="base",
        choices=["base", "reference"],
        help="pairwise judging compares against the base model or the questions' reference "
        "answers (e.g. GPT-4's)",
    )
    add_judge_args(parser)


def add_judge_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LLM judge (override eval.judge.*)")
    group.add_argument("--judge-base-url", help="OpenAI-compatible API root, e.g. .../v1")
    group.add_argument("--judge-model", help="judge model name")
    group.add_argument("--judge-api-key-env", help="environment variable with the API key")
    group.add_argument("--judge-prompts", help="FastChat judge_prompts.jsonl")
    group.add_argument("--judge-mode", choices=["single", "pairwise", "both"])
    group.add_argument("--judge-repeats", type=int, help="times each judgment is asked")
    group.add_argument("--judge-concurrency", type=int, help="judge requests in flight")
    group.add_argument(
        "--judge-max-tokens", type=int, help="judge reply cap (fedit serve allows 512 by default)"
    )


def with_judge_flags(cfg: Config, args: argparse.Namespace, **eval_changes: Any) -> Config:
    """``cfg`` with the --judge-* flags (and other eval fields) applied, validated again."""
    judge = {field: getattr(args, flag) for flag, field in JUDGE_FLAGS.items()}
    judge = {key: value for key, value in judge.items() if value is not None}
    eval_changes = {key: value for key, value in eval_changes.items() if value is not None}
    raw = cfg.to_dict()
    raw["eval"].update(eval_changes)
    raw["eval"]["judge"].update(judge)
    return config_from_dict(raw)


def cmd_eval(args: argparse.Namespace, out: Console, console: Console) -> int:
    from fedit.cli.progress import ProgressObserver
    from fedit.evaluation.runner import (
        check_judge,
        default_output,
        evaluate_suites,
        grade_judge_suites,
        load_for_eval,
        resolve_config,
        write_results,
    )
    from fedit.evaluation.suites import load_suites

    adapter = Path(args.adapter) if args.adapter else None
    config = Path(args.config) if args.config else None
    cfg = resolve_config(adapter, config, args.model, args.template)
    cfg = with_judge_flags(
        cfg, args, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    out_dir = Path(args.out) if args.out else default_output(adapter)
    suites = load_suites(args.suite, cfg)
    judged = [suite for suite in suites if suite.spec.kind == "judge"]
    if judged:
        check_judge(cfg)
    loaded = load_for_eval(cfg, adapter)
    label = "adapter" if adapter is not None else "base"
    with ProgressObserver(console) as observer:
        results = evaluate_suites(loaded, cfg, suites, observer=observer)
        opponents = _baseline_answers(args.judge_baseline, loaded, cfg, judged, observer)
    if judged:
        stats = grade_judge_suites(results, suites, cfg, opponents)
        out.print(f"judge: {stats}")
    summary = write_results(out_dir, results, label)
    for name, result in results.items():
        out.print(f"{name}: {_headline(result)}", markup=False, highlight=False)
    out.print(f"summary: {summary}")
    return 0


def _headline(result: dict[str, Any]) -> str:
    """One line of a suite's main numbers for the terminal."""
    parts = [f"{k} {result[k]:.4f}" for k in ("accuracy", "rouge_l", "loss") if k in result]
    if result.get("kind") == "lm_eval":
        from fedit.evaluation.harness import headline

        parts += headline(result)
    single = result.get("single")
    if single:
        parts.append(
            f"judge score {single['score']:.3f} ({single['num_judgments']} judgments, "
            f"{single['parse_failures']} unparseable, {single['request_failures']} failed)"
            if single.get("score") is not None
            else f"judge score – ({single['parse_failures']} unparseable)"
        )
    for opponent, pair in (result.get("pairwise") or {}).items():
        rate = pair.get("win_rate")
        parts.append(f"win rate vs {opponent} " + ("–" if rate is None else f"{rate:.3f}"))
    if not parts and "answers" in result:
        parts.append(f"{len(result['answers'])} answers written")
    return ", ".join(parts)


def _baseline_answers(
    baseline: str, loaded: Any, cfg: Config, judged: list[Any], observer: Any
) -> dict[str, dict[str, dict[str, Any]]]:
    """What pairwise judging compares the adapter's answers with."""
    from fedit.evaluation.runner import evaluate_suites

    if not judged or cfg.eval.judge.mode == "single":
        return {}
    if baseline == "reference":
        answers = {}
        for suite in judged:
            missing = [q.question_id for q in suite.questions if not q.reference]
            if missing:
                raise ConfigError(
                    f"--judge-baseline reference: {suite.spec.name} has no reference answer for "
                    f"question {missing[0]}"
                )
            answers[suite.spec.name] = {
                "answers": {str(q.question_id): list(q.reference) for q in suite.questions}
            }
        return {"reference": answers}
    if not loaded.has_adapter:
        raise ConfigError("--judge-baseline base: there is no adapter to compare the base with")
    return {"base": evaluate_suites(loaded, cfg, judged, False, observer, "base")}


def cmd_compare(args: argparse.Namespace, out: Console, console: Console) -> int:
    from fedit.cli.progress import ProgressObserver
    from fedit.config import load_config
    from fedit.evaluation.compare import run_compare

    cfg = load_config(args.config, args.overrides)
    if cfg.compare.seeds:
        return _compare_seeds(cfg, out, console)
    with ProgressObserver(console) as observer:
        outcome = run_compare(cfg, observer)
    out.print(outcome.table_text, markup=False, highlight=False)
    out.print(f"report: {outcome.report}")
    out.print(f"finished in {outcome.seconds / 60:.1f} min ({outcome.seconds:.0f} s)")
    return 0


def _compare_seeds(cfg: Config, out: Console, console: Console) -> int:
    """``compare.seeds``: one comparison per seed, then intervals (evaluation/study.py)."""
    from fedit.cli.progress import ProgressObserver
    from fedit.evaluation.study import run_study
    from fedit.evaluation.study_report import FINDING_METRICS, finding

    with ProgressObserver(console) as observer:
        outcome = run_study(cfg, observer)
    for suite, data in outcome.summary["suites"].items():
        for row in data["paired"]:
            if row["metric"] in FINDING_METRICS:
                out.print(f"{suite}: {finding(row, outcome.summary)}", markup=False)
    out.print(f"report: {outcome.report}")
    out.print(f"finished in {outcome.seconds / 60:.1f} min ({outcome.seconds:.0f} s)")
    return 0
