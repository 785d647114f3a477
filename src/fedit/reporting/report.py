"""The run's report.md and plots, built only from files in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fedit.data.heterogeneity import format_heterogeneity
from fedit.io import atomic_write_text, read_jsonl
from fedit.reporting import plots
from fedit.reporting.personalization import personalization_section
from fedit.reporting.preference import objective_line, preference_table
from fedit.reporting.privacy_report import privacy_section
from fedit.reporting.robustness import robustness_lines
from fedit.reporting.summary import fmt, summary_rows
from fedit.reporting.systems import PLOT as SIMULATED_TIME_PLOT
from fedit.reporting.systems import evaluations_in_time, has_clock, systems_section

PLOTS = {
    "loss": "loss.png",
    "accuracy": "accuracy.png",
    "categories": "accuracy_by_category.png",
}


def _fmt(value: Any, digits: int = 4) -> str:
    return fmt(value, digits)


def _summary_table(history: list[dict[str, Any]]) -> list[str]:
    rows = summary_rows(history)
    if not rows:
        return ["No evaluation was run."]
    categories = sorted({c for _, e in rows for c in e.get("accuracy_by_category", {})})
    header = ["model", "held-out loss", "perplexity", "accuracy", *categories]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, evaluation in rows:
        by_cat = evaluation.get("accuracy_by_category", {})
        cells = [
            label,
            _fmt(evaluation.get("loss")),
            _fmt(evaluation.get("perplexity"), 2),
            _fmt(evaluation.get("accuracy"), 3),
            *[_fmt(by_cat.get(c), 2) for c in categories],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def communication_summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Bytes moved over the whole run, from the rounds' ``communication`` records."""
    rounds = [r for r in history if r["round"] > 0 and "communication" in r]
    client_metrics = [m for r in rounds for m in (r.get("client_metrics") or {}).values()]
    # Under secure aggregation nothing is recorded per client: count who was in each sum.
    secure = [_secure(r) for r in rounds if _secure(r)]
    secure_clients = sum(len(s.get("clients", [])) for s in secure)
    errors = [
        m["compression_error"]["relative_error"] for m in client_metrics if "compression_error" in m
    ]
    down = sum(r["communication"]["bytes_down"] for r in rounds)
    up = sum(r["communication"]["bytes_up"] for r in rounds)
    return {
        "rounds": len(rounds),
        "client_rounds": len(client_metrics) or secure_clients,
        "bytes_down": down,
        "bytes_up": up,
        "bytes_total": down + up,
        "dropped": sum(len(r.get("dropped_clients") or []) for r in rounds),
        "mean_compression_error": sum(errors) / len(errors) if errors else None,
    }


def _secure(record: dict[str, Any]) -> dict[str, Any]:
    return (record.get("aggregation") or {}).get("secure_aggregation") or {}


def _secure_aggregation(history: list[dict[str, Any]]) -> list[str]:
    """The quantization of a secure-aggregation run, and its error against the update."""
    records = [_secure(r) for r in history if _secure(r)]
    if not records:
        return []
    first = records[0]
    lines = [
        "## Secure aggregation",
        "",
        f"- SecAgg+ in {len(records)} rounds: the server received only masked vectors and "
        "unmasked their sum (docs/privacy.md)",
        f"- Quantization: {first['bits']} bits over ±{first['clipping_range']:.3g}, step "
        f"{first['quantization_step']:.2e}",
    ]
    bounded = [r for r in records if "error_bound" in r]
    if bounded:
        bound = max(r["error_bound"] for r in bounded)
        ratio = max(r["error_bound"] / max(r["update_scale"], 1e-30) for r in bounded)
        lines.append(
            f"- Quantization error of the mean update: at most {bound:.2e} a coordinate, "
            f"{ratio:.1e} of the update's largest coordinate at worst; coordinates clipped "
            f"to the range: {sum(r['clipped_coordinates'] for r in bounded)}"
        )
        dropped = sum(r["dropped_after_key_sharing"] for r in bounded)
        lines.append(f"- Clients lost after key sharing and recovered from shares: {dropped}")
    return [*lines, ""]


def _mb(num_bytes: float) -> str:
    return f"{num_bytes / 1e6:.2f}"


def _unrecorded(history: list[dict[str, Any]]) -> str:
    """Why a run has no byte counts: a secret DP selection (they would count the replies)."""
    secret = any("privacy" in r and "selected_clients" not in r for r in history)
    if secret:
        return (
            "Not recorded: the clients of each round are secret under this run's differential "
            "privacy, and byte counts would tell how many replied (docs/privacy.md)."
        )
    return "Not recorded."


def _communication(history: list[dict[str, Any]], compression: str) -> list[str]:
    totals = communication_summary(history)
    if not totals["client_rounds"]:
        return []
    per_client = totals["bytes_up"] / totals["client_rounds"]
    lines = [
        f"- Sent to clients: {_mb(totals['bytes_down'])} MB; received from clients: "
        f"{_mb(totals['bytes_up'])} MB; total {_mb(totals['bytes_total'])} MB "
        f"over {totals['client_rounds']} client rounds",
        f"- Upload per client per round: {_mb(per_client)} MB (compression `{compression}`)",
    ]
    if totals["mean_compression_error"] is not None:
        lines.append(
            f"- Mean relative reconstruction error of compressed uploads: "
            f"{totals['mean_compression_error']:.2e}"
        )
    if totals["dropped"]:
        lines.append(f"- Dropped out (selected, never answered): {totals['dropped']} client rounds")
    return lines


def _round_table(history: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| round | clients | mean train loss | held-out loss | accuracy | lr | MB down / up "
        "| seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for record in history:
        if record["round"] == 0:
            continue
        losses = list(record["train_loss"].values())
        evaluation = record.get("eval") or {}
        comm = record.get("communication") or {}
        moved = f"{_mb(comm['bytes_down'])} / {_mb(comm['bytes_up'])}" if comm else "–"
        # A private run with secret selection records no clients (docs/privacy.md).
        clients = ", ".join(map(str, record.get("selected_clients", []))) or "secret"
        if record.get("dropped_clients"):
            clients += f" (dropped {', '.join(map(str, record['dropped_clients']))})"
        lines.append(
            f"| {record['round']} | {clients} | "
            f"{_fmt(sum(losses) / len(losses) if losses else None)} | "
            f"{_fmt(evaluation.get('loss'))} | {_fmt(evaluation.get('accuracy'), 3)} | "
            f"{record['lr']:.2e} | {moved} | {sum(record['seconds'].values()):.1f} |"
        )
    return lines


def _client_stats(history: list[dict[str, Any]]) -> list[str]:
    metrics = [m for r in history for m in (r.get("client_metrics") or {}).values()]
    if not metrics:
        return []
    tokens = sum(m.get("tokens", 0) for m in metrics)
    seconds = sum(m.get("seconds", 0.0) for m in metrics)
    waste = [m["padding_waste"] for m in metrics if "padding_waste" in m]
    lines = [f"- Local training: {len(metrics)} client runs, {tokens:,} tokens, {seconds:.1f} s"]
    if seconds > 0:
        lines[-1] += f" ({tokens / seconds:.0f} tokens/s)"
    if waste:
        lines.append(f"- Padding waste: {100 * sum(waste) / len(waste):.1f}% of processed tokens")
    return lines


def _data_stats(run_dir: Path) -> list[str]:
    path = run_dir / "partition.json"
    if not path.is_file():
        return []
    table = json.loads(path.read_text(encoding="utf-8"))
    lines = [
        f"- Examples: {table.get('num_train', '?')} training, {table.get('num_test', '?')} test"
    ]
    tok = table.get("tokenization")
    if tok:
        lines.append(
            f"- Truncated at train.cutoff_len: {tok['truncated']} of {tok['total']} "
            f"(dropped with no response left: {tok['dropped_no_labels']})"
        )
    if "heterogeneity" in table:
        lines += [f"- {line}" for line in format_heterogeneity(table["heterogeneity"]).splitlines()]
    return lines


def _robustness(history: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    attack = (cfg.get("attack") or {}).get("kind", "none")
    lines = robustness_lines(history, attack, (cfg.get("robust") or {}).get("method", "none"))
    return [*lines, ""] if lines else []


def write_report(run_dir: Path) -> Path:
    """Write report.md and the PNG plots into ``run_dir``; return the report's path."""
    history = read_jsonl(run_dir / "metrics.jsonl")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    plots.plot_loss(history, run_dir / PLOTS["loss"])
    plots.plot_accuracy(history, run_dir / PLOTS["accuracy"])
    if has_clock(history):
        measured = cfg["federation"]["system"]["profiles"] == "measured"
        plots.plot_simulated_time(
            evaluations_in_time(history),
            run_dir / SIMULATED_TIME_PLOT,
            "measured" if measured else "simulated",
        )
    rows = summary_rows(history)
    has_accuracy = len(rows) == 2 and "accuracy_by_category" in rows[-1][1]
    if has_accuracy:
        plots.plot_category_accuracy(
            rows[0][1].get("accuracy_by_category", {}),
            rows[1][1]["accuracy_by_category"],
            run_dir / PLOTS["categories"],
        )
    fed, model, data = cfg["federation"], cfg["model"], cfg["data"]
    lines = [
        "# FedIT run report",
        "",
        f"- Model: `{model['name']}` with LoRA r={cfg['lora']['r']}, "
        f"alpha={cfg['lora']['alpha']}, targets {cfg['lora']['target_modules']}",
        f"- Data: `{data['source']}`, template `{data['template']}`, "
        f"partition `{data['partition']['method']}` over {fed['num_clients']} clients",
        f"- Federation: {fed['rounds']} rounds, fraction_fit {fed['fraction_fit']}, "
        f"strategy `{cfg['strategy']['name']}`, seed {cfg['seed']}",
        objective_line(cfg),
        "",
        "## Results on the held-out test set",
        "",
        *_summary_table(history),
        "",
        *preference_table(history),
        *privacy_section(run_dir, history),
        "## Rounds",
        "",
        *_round_table(history),
        "",
        "## Training statistics",
        "",
        *_client_stats(history),
        *_data_stats(run_dir),
        "",
        *_robustness(history, cfg),
        *_secure_aggregation(history),
        *systems_section(history, cfg),
        *personalization_section(run_dir, cfg),
        "## Communication",
        "",
        *(_communication(history, fed.get("upload_compression", "none")) or [_unrecorded(history)]),
        "",
        "## Plots",
        "",
        f"![loss per round]({PLOTS['loss']})",
        "",
        f"![accuracy per round]({PLOTS['accuracy']})",
        "",
    ]
    if has_accuracy:
        lines += [f"![accuracy per category]({PLOTS['categories']})", ""]
    path = run_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
