"""``fedit eval``: score a base model or an adapter on suites and write ``eval/<suite>.json``.

Example:
    fedit eval --adapter runs/quickstart/global_adapter --suite heldout \\
        --suite judge:data/vicuna_bench/question.jsonl --judge-base-url http://127.0.0.1:8000/v1

The run's ``config.yaml`` (next to the adapter) supplies the base model, the prompt template, the
held-out split and the judge settings; command-line flags override them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.client.evaluate import batch_progress
from fedit.config import Config, ConfigError, load_config
from fedit.evaluation.suites import EvalContext, JudgeSuite, Suite
from fedit.integrity import check_adapter_folder
from fedit.io import atomic_write_json, atomic_write_text
from fedit.reporting.summary import suite_summary
from fedit.server.observer import RunObserver

log = logging.getLogger(__name__)


def find_run_config(adapter: Path | None) -> Path | None:
    """The ``config.yaml`` of the run that wrote ``adapter`` (RUN/global_adapter or
    RUN/checkpoints/round_NNN), if there is one."""
    if adapter is None:
        return None
    for candidate in (adapter.parent / "config.yaml", adapter.parent.parent / "config.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _check_adapter(adapter: Path | None) -> None:
    if adapter is not None:
        check_adapter_folder(adapter)


def resolve_config(
    adapter: Path | None, config: Path | None, model_name: str | None, template: str | None
) -> Config:
    """The run's config (or ``--config``, or the defaults), with ``--model``/``--template``."""
    _check_adapter(adapter)
    path = config or find_run_config(adapter)
    overrides = []
    if model_name:
        overrides.append(f"model.name={model_name}")
    if template:
        overrides.append(f"data.template={template}")
    if path is None and not model_name:
        raise ConfigError(
            "--model: no run config.yaml next to the adapter names the base model; pass --model "
            "or --config"
        )
    return load_config(path, overrides)


def default_output(adapter: Path | None) -> Path:
    """Where ``eval/`` goes: the run folder for RUN/global_adapter, else the adapter folder."""
    if adapter is None:
        raise ConfigError("--out: evaluating a base model without --adapter needs --out DIR")
    if adapter.name == "global_adapter" and (adapter.parent / "config.yaml").is_file():
        return adapter.parent
    return adapter


@dataclass
class LoadedModel:
    """The model under evaluation and how to switch its adapter off (for ``base``)."""

    model: Any
    tokenizer: Any
    has_adapter: bool


def load_for_eval(cfg: Config, adapter: Path | None) -> LoadedModel:
    """The base model of ``cfg`` plus, when given, the adapter (peft, in eval mode)."""
    from fedit.model.loading import load_model

    _check_adapter(adapter)
    model: Any
    model, tokenizer = load_model(cfg.model)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return LoadedModel(model, tokenizer, adapter is not None)


def evaluate_suites(
    loaded: LoadedModel,
    cfg: Config,
    suites: list[Suite],
    use_adapter: bool = True,
    observer: RunObserver | None = None,
    label: str = "",
) -> dict[str, dict[str, Any]]:
    """Run every suite on the model (adapter on, or off when ``use_adapter`` is False).

    ``observer.on_eval_progress`` hears of every batch, as ``"<label> <suite>"``.
    """
    observer = observer or RunObserver()
    results = {}
    for suite in suites:
        started = time.perf_counter()
        ctx = EvalContext(loaded.model, loaded.tokenizer, cfg.data.template, cfg)
        name = f"{label} {suite.spec.name}".strip()
        with batch_progress(_row_counter(observer, name, suite.size())):
            if loaded.has_adapter and not use_adapter:
                with loaded.model.disable_adapter():
                    result = suite.evaluate(ctx)
            else:
                result = suite.evaluate(ctx)
        result["seconds"] = time.perf_counter() - started
        results[suite.spec.name] = result
    return results


def _row_counter(observer: RunObserver, name: str, total: int) -> Callable[[int], None]:
    """Reports 0 of ``total`` now, then the running count of rows done as batches finish."""
    done = 0
    observer.on_eval_progress(name, 0, total)

    def advance(rows: int) -> None:
        nonlocal done
        done += rows
        observer.on_eval_progress(name, min(done, total), total)

    return advance


def grade_judge_suites(
    results: dict[str, dict[str, Any]],
    suites: list[Suite],
    cfg: Config,
    opponents: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Grade every judge suite's answers in ``results`` in place; returns the client's stats.

    Args:
        results: Suite results of the judged model (judge suites hold ``answers``).
        suites: The suites (judge ones carry the questions).
        cfg: ``eval.judge`` says where the judge is and how to ask it.
        opponents: ``name -> suite results`` of other models, for pairwise comparison.
    """
    from fedit.evaluation.judge import JudgeClient, grade_pairwise, grade_single, load_judge_prompts

    judge = cfg.eval.judge
    if judge.prompts is None:
        raise ConfigError(
            "eval.judge.prompts: name FastChat's judge_prompts.jsonl (--judge-prompts FILE)"
        )
    prompts = load_judge_prompts(Path(judge.prompts))
    client = JudgeClient(judge)
    client.check()
    for suite in suites:
        if not isinstance(suite, JudgeSuite):
            continue
        result = results[suite.spec.name]
        answers = _answers(result, suite.questions)
        if judge.mode in ("single", "both"):
            result["single"] = grade_single(
                client, prompts, suite.questions, answers, judge.repeats
            )
        if judge.mode in ("pairwise", "both"):
            result["pairwise"] = {
                name: grade_pairwise(
                    client,
                    prompts,
                    suite.questions,
                    answers,
                    _answers(other[suite.spec.name], suite.questions),
                    judge.repeats,
                    names=("this", name),
                )
                for name, other in (opponents or {}).items()
            }
    return dict(client.stats)


def check_judge(cfg: Config) -> None:
    """Judge suites need a reachable judge and its templates: fail before any model loads."""
    from fedit.evaluation.judge import JudgeClient

    judge = cfg.eval.judge
    if judge.base_url is None:
        raise ConfigError(
            "eval.judge.base_url: judge suites need an OpenAI-compatible judge "
            "(--judge-base-url URL)"
        )
    if judge.prompts is None or not Path(judge.prompts).is_file():
        raise ConfigError(
            f"eval.judge.prompts: FastChat's judge_prompts.jsonl is needed, got {judge.prompts!r}"
        )
    JudgeClient(judge).check()


def _answers(result: dict[str, Any], questions: list[Any]) -> dict[Any, list[str]]:
    """Stored answers are keyed by ``str(question_id)`` (JSON); key them by the questions' ids."""
    stored = result["answers"]
    return {
        q.question_id: stored[str(q.question_id)] for q in questions if str(q.question_id) in stored
    }


def write_results(out_dir: Path, results: dict[str, dict[str, Any]], label: str) -> Path:
    """Write ``eval/<suite>.json`` for each result and regenerate ``eval/summary.md`` from every
    suite file in the folder. Returns the summary's path."""
    eval_dir = out_dir / "eval"
    for name, result in results.items():
        atomic_write_json(eval_dir / f"{name}.json", {"model": label, **result})
    lines = [f"# Evaluation: {label}", ""]
    for path in sorted(eval_dir.glob("*.json")):
        stored = json.loads(path.read_text(encoding="utf-8"))
        lines += suite_summary(stored, stored.get("model", label))
    summary = eval_dir / "summary.md"
    atomic_write_text(summary, "\n".join(lines))
    return summary
