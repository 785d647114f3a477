"""The ``lm_eval`` suite: EleutherAI's lm-evaluation-harness run on the model fedit has loaded.

``lm_eval:TASK[,TASK…]`` hands the model already in memory (the base model, with the adapter
on or off as the caller chose) and its tokenizer to lm-eval's ``HFLM``, so nothing loads twice,
and calls ``lm_eval.simple_evaluate``. The prompts, continuations and metrics are the task's,
not fedit's: ``data.template`` does not apply, and no chat template is used, as in a plain
``lm_eval`` run. Tasks are names lm-eval knows or local task YAMLs (``evaluation.harness_tasks``).

The result keeps lm-eval's metric names (``acc``, ``acc_stderr``, ``acc_norm``, ...; a filter
other than ``none`` stays in the name, ``exact_match,strict-match``): per task in
``<metric>_by_category`` (a suite's categories are its tasks) and overall at the top level (the
task's own values for one task; for several, the size-weighted mean and the pooled standard
error, lm-eval's rules for a group weighted by size). ``predictions`` holds every document's
target, chosen option and option log-likelihoods, from lm-eval's logged samples.

Example:
    suite = load_harness_suite(parse_suite("lm_eval:data/mc_sample/mc_sample.yaml"), "--suite")
    result = suite.evaluate(EvalContext(model, tokenizer, "alpaca", cfg))
    result["acc"], result["acc_stderr"]
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedit.client.device import model_device, resolve_autocast
from fedit.client.evaluate import eval_mode, report_batch
from fedit.evaluation.harness_tasks import HarnessTasks, load_harness_tasks

if TYPE_CHECKING:
    from fedit.evaluation.suites import EvalContext, SuiteSpec

log = logging.getLogger(__name__)

_NO_FILTER = ",none"  # lm-eval's key suffix for a metric computed without a filter


@dataclass
class HarnessSuite:
    """lm-eval tasks, checked and built once when the suite is loaded."""

    spec: SuiteSpec
    tasks: HarnessTasks

    def size(self) -> int:
        return self.tasks.num_requests

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        raw = run_harness(ctx, self.tasks)
        return {"suite": self.spec.name, "kind": self.spec.kind, **harness_result(raw, self.tasks)}


def load_harness_suite(spec: SuiteSpec, key: str) -> HarnessSuite:
    """The suite of ``lm_eval:SOURCE``; raises ConfigError (one line) for what cannot run."""
    return HarnessSuite(spec, load_harness_tasks(str(spec.source), key))


def run_harness(ctx: EvalContext, tasks: HarnessTasks) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``ctx.model`` with per-document samples logged.

    The forward passes use ``ctx.autocast`` and an fp32 softmax, as fedit's own scorers do.
    lm-eval seeds Python's, NumPy's and torch's generators; their states are restored after.
    """
    import lm_eval

    from fedit.evaluation.harness_model import ProgressLM

    device = model_device(ctx.model)
    log.info("lm-eval %s, lm_eval %s", ", ".join(tasks.names), _lm_eval_version())
    with eval_mode(ctx.model), _generators_restored():
        lm = ProgressLM(
            pretrained=ctx.model,
            tokenizer=ctx.tokenizer,
            backend="causal",
            batch_size=ctx.cfg.eval.batch_size,
            mixed_precision_dtype=resolve_autocast(device, ctx.autocast),
            softmax_dtype=torch.float32,
        )
        raw = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks.specs), task_manager=tasks.manager, log_samples=True
        )
    report_batch(tasks.num_requests)  # the counter stops at the total: completes the bar
    if raw is None:  # only a non-zero rank of a distributed run gets None
        raise RuntimeError("lm_eval.simple_evaluate returned no results")
    return dict(raw)


@contextmanager
def _generators_restored() -> Iterator[None]:
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def harness_result(raw: dict[str, Any], tasks: HarnessTasks) -> dict[str, Any]:
    """fedit's suite result from lm-eval's: metrics overall and per task, and predictions.

    Args:
        raw: What ``lm_eval.simple_evaluate`` returned (with ``log_samples=True``).
        tasks: The suite's tasks (a single requested group keeps lm-eval's own aggregate).
    """
    sizes = {task: int(n["effective"]) for task, n in raw["n-samples"].items()}
    per_task = {task: task_metrics(raw["results"][task]) for task in sizes}
    names = list(dict.fromkeys(name for metrics in per_task.values() for name in metrics))
    groups = raw.get("groups") or {}
    if len(tasks.names) == 1 and tasks.names[0] in groups:
        overall = task_metrics(groups[tasks.names[0]])
    else:
        overall = {name: _pooled(name, per_task, sizes) for name in names}
    result: dict[str, Any] = {
        "tasks": tasks.names,
        "num_questions": sum(sizes.values()),
        "num_questions_by_task": sizes,
        "metric_names": names,
    }
    for name in names:
        result[name] = overall.get(name)
        result[f"{name}_by_category"] = {task: m.get(name) for task, m in per_task.items()}
    samples = raw.get("samples") or {}
    result["predictions"] = {
        task: [sample_prediction(sample) for sample in task_samples]
        for task, task_samples in samples.items()
    }
    # What compare's paired bootstrap needs: each document's score, tasks in order.
    result["per_example"] = per_example_scores(samples, names)
    result["lm_eval"] = {
        "version": _lm_eval_version(),
        "task_versions": raw.get("versions", {}),
        "higher_is_better": raw.get("higher_is_better", {}),
    }
    return result


def task_metrics(row: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's ``{"acc,none": 0.25, "acc_stderr,none": "N/A", "alias": ...}`` as
    ``{"acc": 0.25, "acc_stderr": None}``: metrics only, ``,none`` dropped."""
    metrics: dict[str, float | None] = {}
    for key, value in row.items():
        if "," not in key:
            continue  # alias, name, sample_len
        name = key.removesuffix(_NO_FILTER)
        metrics[name] = float(value) if isinstance(value, (int, float)) else None
    return metrics


def _pooled(name: str, per_task: dict[str, dict[str, Any]], sizes: dict[str, int]) -> Any:
    """Size-weighted mean of a metric over tasks, or the pooled standard error of a stderr."""
    from lm_eval.api.metrics import aggregate_subtask_metrics, pooled_sample_stderr

    values = [(per_task[task].get(name), sizes[task]) for task in per_task]
    if any(value is None for value, _ in values):
        return None
    if len(values) == 1:
        return values[0][0]
    scores = [float(value) for value, _ in values if value is not None]
    counts = [size for _, size in values]
    if "_stderr" in name:
        return float(pooled_sample_stderr(scores, counts))
    return float(aggregate_subtask_metrics(scores, counts))


def per_example_scores(
    samples: dict[str, list[dict[str, Any]]], names: list[str]
) -> dict[str, list[float]]:
    """Each unfiltered metric's per-document scores (``acc``: 0 or 1), by task and document."""
    ordered = [
        sample
        for task_samples in samples.values()
        for sample in sorted(task_samples, key=lambda s: s["doc_id"])
        if sample.get("filter", "none") == "none"
    ]
    scores = {}
    for name in names:
        values = [sample.get(name) for sample in ordered]
        numbers = [float(v) for v in values if isinstance(v, (int, float))]
        if values and len(numbers) == len(values):
            scores[name] = numbers
    return scores


def sample_prediction(sample: dict[str, Any]) -> dict[str, Any]:
    """One logged document: its id and target, and for scored options the chosen index and
    each option's log-likelihood (lm-eval's ``filtered_resps``), else the response."""
    prediction: dict[str, Any] = {"doc_id": sample["doc_id"], "target": _plain(sample["target"])}
    responses = sample.get("filtered_resps") or []
    if responses and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in responses):
        likelihoods = [float(r[0]) for r in responses]  # (log-likelihood, is_greedy) per option
        prediction["predicted"] = max(range(len(likelihoods)), key=likelihoods.__getitem__)
        prediction["log_likelihoods"] = likelihoods
    else:
        prediction["response"] = str(responses[0] if len(responses) == 1 else responses)[:500]
    prediction["scores"] = {m: _plain(sample.get(m)) for m in sample.get("metrics", [])}
    return prediction


def _plain(value: Any) -> Any:
    """JSON-friendly: NumPy scalars to Python, anything else unusual to its text."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return str(value)


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def headline(result: dict[str, Any]) -> list[str]:
    """``acc 0.2500 ± 0.0993`` for each metric that has a standard error, else the value."""
    parts = []
    for name in result.get("metric_names", []):
        value = result.get(name)
        if name.endswith("_stderr") or "_stderr," in name or not isinstance(value, float):
            continue
        stderr = result.get(_stderr_name(name))
        parts.append(f"{name} {value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else ""))
    return parts


def _stderr_name(name: str) -> str:
    metric, comma, filtered = name.partition(",")
    return f"{metric}_stderr{comma}{filtered}"
