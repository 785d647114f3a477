"""The report's privacy section: the plan, ε per round, and the one-line guarantee."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedit.privacy.plan import PLAN_FILE, VOID_REASON, epsilon_line
from fedit.privacy.threats import PARTIES
from fedit.reporting.summary import fmt


def last_privacy_record(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``privacy`` record of the last round that has one."""
    records = [r["privacy"] for r in history if r.get("privacy")]
    return records[-1] if records else None


def final_epsilon_line(history: list[dict[str, Any]]) -> str | None:
    """``ε = … at δ = … (level, accountant)`` after the last round, or None without DP.

    A run whose rounds were securely aggregated (``aggregation.secure_aggregation``) says so
    in the line, whether or not its ``privacy`` record does.
    """
    record = last_privacy_record(history)
    if record is None:
        return None
    secure = any("secure_aggregation" in (r.get("aggregation") or {}) for r in history)
    return epsilon_line({"secure_aggregation": secure, **record})


def _plan_lines(plan: dict[str, Any]) -> list[str]:
    delta_note = " (default min(1e-5, 1/N^1.1))" if plan.get("delta_is_default") else ""
    noun = "clients" if plan["level"] == "client" else "training examples"
    lines = [
        f"- Level: **{plan['level']}**, accountant {plan['accountant'].upper()} (dp-accounting)",
        f"- δ = {plan['delta']:.3g}{delta_note}, N = {plan['population']} {noun}",
        f"- Noise multiplier z = {plan['noise_multiplier']:.4g}"
        + (
            f", calibrated to ε = {plan['target_epsilon']:g} over {plan['rounds']} rounds"
            if plan.get("target_epsilon") is not None
            else " (set directly)"
        ),
        f"- Clip norm C = {plan['clip_norm']:g}",
    ]
    if plan["level"] == "client":
        sampling = {
            "poisson": f"Poisson sampling of clients, rate q = {plan['sample_rate']:g}",
            "fixed": f"{plan['sample_size']} of {plan['population']} clients per round "
            "(sampling without replacement, replace-one neighbours)",
            "all": "every client every round (no amplification by sampling)",
        }[plan["sampling"]]
        lines += [f"- {sampling}; noise added at the {plan['noise_at']}"]
        if plan.get("count_noise_std") is not None:
            lines.append(
                f"- Adaptive clipping (target quantile {plan['target_quantile']:g}): count noise "
                f"σ_b = {plan['count_noise_std']:.3g}, update noise z_Δ = "
                f"{plan['update_noise_multiplier']:.4g}; both are in ε"
            )
    return lines


def _threat_lines(plan: dict[str, Any]) -> list[str]:
    """Against whom the guarantee holds, as the plan states it (``privacy.threats``)."""
    model = plan.get("threat_model") or {}
    if not model:
        return []
    lines = ["| who | learns | guarantee |", "|---|---|---|"]
    for party, name in PARTIES.items():
        if party in model:
            lines.append(f"| {name} | {model[party]['learns']} | {model[party]['guarantee']} |")
    if plan.get("upload_epsilon") is not None:
        whom = "the server"
        if plan.get("secure_aggregation"):
            whom = "a server that enough colluding clients help to unmask it"
        lines += ["", f"ε₁ of one upload against {whom}: {plan['upload_epsilon']:.3g}."]
    if plan.get("reproducible_noise"):
        lines += ["", f"**ε void: {VOID_REASON}.**"]
    return lines


def privacy_section(run_dir: Path, history: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the section, or [] for a run without differential privacy."""
    path = run_dir / PLAN_FILE
    if not path.is_file():
        return []
    plan = json.loads(path.read_text(encoding="utf-8"))
    lines = ["## Privacy", "", *_plan_lines(plan), "", *_threat_lines(plan), ""]
    rounds = [r for r in history if r.get("privacy")]
    if rounds:
        lines += [
            "| round | ε so far | clip C | unclipped fraction (noised) |",
            "|---|---|---|---|",
        ]
        for record in rounds:
            privacy = record["privacy"]
            lines.append(
                f"| {record['round']} | {fmt(privacy['epsilon'], 3)} | "
                f"{fmt(privacy['clip_norm'], 4)} | {fmt(privacy.get('unclipped_estimate'), 3)} |"
            )
        spent = sorted((rounds[-1]["privacy"].get("epsilon_per_client") or {}).values())
        if spent:
            lines += [
                "",
                f"Per-client ε after round {rounds[-1]['round']} ({len(spent)} clients trained): "
                f"min {spent[0]:.3g}, median {spent[len(spent) // 2]:.3g}, max {spent[-1]:.3g}; "
                "each client's is in metrics.jsonl (`epsilon_per_client`).",
            ]
        lines += ["", f"**{final_epsilon_line(history)}**", ""]
    return lines
