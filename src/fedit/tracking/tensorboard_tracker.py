"""TensorBoard: event files in ``ROOT/tensorboard/`` (``tensorboard --logdir ROOT/tensorboard``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.tracking.tracker import RunIdentity, Scalar, Tracker


class TensorBoardTracker(Tracker):
    """Scalars per round; the config as hyperparameters and text; the report as text."""

    def start(self, identity: RunIdentity, params: dict[str, Scalar]) -> None:
        # torch's writer needs the tensorboard package, and says so with an ImportError.
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(log_dir=str(identity.root / "tensorboard" / identity.folder))
        lines = [f"    {key}: {value}" for key, value in params.items()]
        self.writer.add_text("config", "\n".join(lines))  # indented: a markdown code block
        # The HPARAMS tab, as add_hparams writes it but without a run folder of its own.
        for summary in hparams(params, {}):
            self.writer._get_file_writer().add_summary(summary)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for row in rows:
            cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row]
            lines.append("| " + " | ".join(cells) + " |")
        self.writer.add_text(name, "\n".join(lines))

    def log_files(self, files: list[Path], folder: str) -> None:
        # TensorBoard keeps no files: the markdown is shown as text, the plots are the scalars.
        for path in files:
            if path.suffix == ".md":
                self.writer.add_text(f"{folder}/{path.stem}", path.read_text(encoding="utf-8"))

    def close(self, failed: bool) -> None:
        self.writer.close()
