"""The report's personalization section, from the closing round's marker (``server.closing``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER = "personalize.json"  # server.closing.CLOSE_MARKER (reporting/ sits below server/)
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
        lines.append(f"- Without a model of their own (served the global adapter): {missing}")
    lines.append(
        f"- Closing round: {record['bytes_down'] / 1e6:.2f} MB down, "
        f"{record['bytes_up'] / 1e6:.3f} MB up (no adapter is sent back)"
    )
    return [*lines, ""]
