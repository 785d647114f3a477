"""The report's personalization section, from the closing round's marker (``server.closing``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedit.reporting.summary import fmt

MARKER = "personalize.json"  # server.closing.CLOSE_MARKER (reporting/ sits below server/)
SCORES = ("loss", "perplexity", "accuracy")  # of fedsa's reference model, in the report
WHAT = {
    "finetune": "each client fine-tuned the final global adapter on its own data",
    "fedsa": "each client paired the global A with its own B, trained at the client",
    "ditto": "each client trained its own adapter towards the global one (Ditto's λ)",
}


def personalization_section(run_dir: Path, cfg: dict[str, Any]) -> list[str]:
    """Markdown lines: who published a model of its own, and where it stays."""
    path = run_dir / MARKER
    if not path.is_file():
        return []
    record = json.loads(path.read_text(encoding="utf-8"))
    method = record["method"]
    published, missing = record["published"], record["not_published"]
    total = len(published) + len(missing)
    lines = [
        "## Personalization",
        "",
        f"- Method: `{method}`: {WHAT.get(method, method)} (docs/personalization.md)",
        f"- {len(published)} of {total} clients published their own model in the closing "
        f"round (round {record['round']}), each in its own `personal/client-<id>/`: "
        "in this run folder in simulation, at the site when deployed; "
        "`fedit serve --run` serves them as `client-<id>`",
    ]
    if missing:
        # fedsa's global adapter has LoRA's initial B: a client that never trained is served
        # the base model
        served = "the base model" if method == "fedsa" else "the global adapter"
        lines.append(f"- Without a model of their own (served {served}): {missing}")
    reference = record.get("global")
    sent_back = "each client's B, once" if reference and reference["b"] == "mean" else "no adapter"
    lines.append(
        f"- Closing round: {record['bytes_down'] / 1e6:.2f} MB down, "
        f"{record['bytes_up'] / 1e6:.3f} MB up ({sent_back})"
    )
    if reference is not None:
        lines += fedsa_global_lines(reference)
    return [*lines, ""]


def fedsa_global_lines(reference: dict[str, Any]) -> list[str]:
    """fedsa's server-side model: the A the clients averaged with the mean of their B's."""
    if reference["b"] != "mean":
        return [
            f"- FedSA global: none ({reference['why']}); the rounds were not evaluated and "
            "`global_adapter` is the global A with LoRA's initial B, i.e. the base model"
        ]
    evaluation = reference["eval"] or {}
    scores = ", ".join(
        f"{metric} {fmt(evaluation[metric])}" for metric in SCORES if metric in evaluation
    )
    return [
        f"- **FedSA global (A, mean B), reference only**: {scores or 'not scored'}. B is the "
        f"mean of the B's that clients {reference['clients']} reported at close (weights: "
        f"{reference['weights']}), paired with an A no client trained against; no client "
        "received this model, and the rounds themselves were not evaluated (the server holds "
        "no B). It is `global_adapter`."
    ]
