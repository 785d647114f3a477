"""The clients of an asynchronous run that are training on the simulated clock, and their files.

Under ``strategy.name=fedbuff`` a client is trained in-process when it starts (from the global
version of that moment), so its update, and from its real tokens and bytes the simulated time
its reply arrives, are known at once; it then waits in the queue until the clock reaches that
time. Each aggregation's checkpoint saves the queue beside the adapter, so a resumed run goes on
with the same clients and the same updates, bit for bit::

    checkpoints/round_NNN/inflight.json           the queue's scalars and the draw counter
    checkpoints/round_NNN/inflight.safetensors    each waiting update's Δ, keyed "<draw>/<name>"
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load, save

from fedit.io import atomic_write_bytes, atomic_write_json
from fedit.types import AdapterState

INFLIGHT_JSON = "inflight.json"
INFLIGHT_TENSORS = "inflight.safetensors"


@dataclass
class InFlight:
    """A client that has trained and whose reply arrives at ``finish`` on the simulated clock."""

    draw: int  # which draw started it (0, 1, ...): unique in a run
    client_id: int
    version: int  # the global version it started from
    finish: float  # simulated seconds when its reply reaches the server
    tiebreak: float  # seeded; orders replies that arrive at the same time
    train_loss: float
    num_examples: int
    metrics: dict[str, Any]  # the reply's (tokens, bytes_down, bytes_up, ...)
    times: dict[str, float]  # download, compute, upload, total (server.clock.ClientTime)
    delta: AdapterState = field(repr=False)  # y − x_version, fp32

    @property
    def order(self) -> tuple[float, float, int]:
        """Arrival order: earliest first; the seeded tiebreak, then the draw, for equal times."""
        return (self.finish, self.tiebreak, self.draw)


@dataclass
class Queue:
    """What an asynchronous run carries from one aggregation to the next."""

    waiting: list[InFlight] = field(default_factory=list)
    draws: int = 0  # draws made so far: seeds the next one
    failed: list[int] = field(default_factory=list)  # gave no usable reply since the last step

    def pop_earliest(self) -> InFlight:
        earliest = min(self.waiting, key=lambda item: item.order)
        self.waiting.remove(earliest)
        return earliest

    def save(self, folder: Path) -> None:
        """Write the queue into a round's checkpoint folder (before its completion marker)."""
        tensors = {
            f"{item.draw}/{name}": tensor.contiguous()
            for item in self.waiting
            for name, tensor in item.delta.items()
        }
        atomic_write_bytes(folder / INFLIGHT_TENSORS, save(tensors))
        scalars = [{k: v for k, v in asdict(item).items() if k != "delta"} for item in self.waiting]
        atomic_write_json(
            folder / INFLIGHT_JSON,
            {"draws": self.draws, "failed": self.failed, "waiting": scalars},
        )

    @classmethod
    def load(cls, folder: Path) -> Queue:
        """Read what ``save`` wrote."""
        raw = json.loads((folder / INFLIGHT_JSON).read_text(encoding="utf-8"))
        tensors = load((folder / INFLIGHT_TENSORS).read_bytes())
        waiting = []
        for item in raw["waiting"]:
            prefix = f"{item['draw']}/"
            delta = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            waiting.append(InFlight(**item, delta=delta))
        return cls(waiting, int(raw["draws"]), [int(c) for c in raw["failed"]])
