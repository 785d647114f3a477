"""The report's lines for the training objective, and the preference metrics per round (DPO)."""

from __future__ import annotations

from typing import Any


def objective_line(cfg: dict[str, Any]) -> str:
    """``- Objective: ...``: instruction tuning, or DPO with its β, reference and loss."""
    objective = cfg.get("train", {}).get("objective", "sft")
    if objective != "dpo":
        return "- Objective: `sft` (next-token loss on the responses)"
    dpo = cfg.get("dpo", {})
    start = cfg.get("model", {}).get("adapter") or "a fresh LoRA init"
    return (
        f"- Objective: `dpo` (beta {dpo.get('beta')}, reference `{dpo.get('reference')}`, "
        f"loss `{dpo.get('loss')}`), starting from {start}"
    )


def _fmt(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def preference_table(history: list[dict[str, Any]]) -> list[str]:
    """Held-out reward accuracy, margin, log-probabilities and answer accuracy per round.

    Empty when no round has preference metrics (instruction tuning).
    """
    rows = [r for r in history if (r.get("eval") or {}).get("reward_accuracy") is not None]
    if not rows:
        return []
    lines = [
        "## Preference metrics on the held-out pairs",
        "",
        "Implicit reward r = beta (log pi - log pi_base); round 0 is the starting model.",
        "",
        "| round | reward accuracy | mean margin | chosen log-p | rejected log-p | exact-answer "
        "accuracy | clients' reward accuracy (training) |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in rows:
        evaluation = record["eval"]
        clients = [
            m["reward_accuracy"]
            for m in (record.get("client_metrics") or {}).values()
            if "reward_accuracy" in m
        ]
        train = sum(clients) / len(clients) if clients else None
        lines.append(
            f"| {record['round']} | {_fmt(evaluation['reward_accuracy'], 3)} | "
            f"{_fmt(evaluation.get('reward_margin'), 3)} | "
            f"{_fmt(evaluation.get('chosen_logp'), 2)} | "
            f"{_fmt(evaluation.get('rejected_logp'), 2)} | "
            f"{_fmt(evaluation.get('accuracy'), 3)} | {_fmt(train, 3)} |"
        )
    return [*lines, ""]
