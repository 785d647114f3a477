"""What ``fedit run`` prints when a run ends: the held-out results table and the bytes moved.

``fedit.reporting.report`` is imported inside ``communication_line``: it pulls in matplotlib,
which the other subcommands should not pay for at start-up.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from fedit.reporting.summary import summary_rows


def results_table(history: list[dict[str, Any]]) -> Table | None:
    """Base model against the last round: loss, accuracy (the backdoor's ASR when measured) and
    accuracy per category; None when nothing was evaluated."""
    rows = summary_rows(history)
    if not rows:
        return None
    table = Table(title="Held-out results")
    table.add_column("metric")
    for label, _ in rows:
        table.add_column(label, justify="right")
    table.add_row("loss", *[_cell(e.get("loss"), 4) for _, e in rows])
    table.add_row("accuracy", *[_cell(e.get("accuracy"), 3) for _, e in rows])
    if any("backdoor_asr" in e for _, e in rows):
        table.add_row("backdoor ASR", *[_cell(e.get("backdoor_asr"), 2) for _, e in rows])
    table.rows[-1].end_section = True
    categories = sorted({c for _, e in rows for c in e.get("accuracy_by_category", {})})
    for category in categories:
        cells = [_cell(e.get("accuracy_by_category", {}).get(category), 2) for _, e in rows]
        table.add_row(f"  {category}", *cells)
    return table


def communication_line(history: list[dict[str, Any]]) -> str | None:
    """Megabytes sent and received over the run; None when no client trained."""
    from fedit.reporting.report import communication_summary

    totals = communication_summary(history)
    if not totals["client_rounds"]:
        return None
    return (
        f"communication: {totals['bytes_down'] / 1e6:.2f} MB sent to clients, "
        f"{totals['bytes_up'] / 1e6:.2f} MB received, "
        f"{totals['bytes_total'] / 1e6:.2f} MB in total over {totals['client_rounds']} "
        "client rounds"
    )


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
