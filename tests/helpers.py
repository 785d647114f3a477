"""Helpers shared by test modules (tests/ is on sys.path through its conftest)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from fedit.server.observer import RunObserver

ROOT = Path(__file__).resolve().parents[1]

# The device the gpu-marked tests run on. FEDIT_GPU_TEST_DEVICE=cpu runs them on the CPU instead,
# which checks the tests themselves on a machine without a GPU (`pytest -m gpu`); the tests that
# measure CUDA memory skip there.
GPU_TEST_DEVICE = os.environ.get("FEDIT_GPU_TEST_DEVICE", "cuda")
needs_cuda = pytest.mark.skipif(
    GPU_TEST_DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (torch.cuda.is_available() is False); run with `make test-gpu`",
)
# Mark a whole test module: `pytestmark = GPU`.
GPU = [pytest.mark.gpu, needs_cuda]
# Parametrize a test over the CPU (default suite) and the GPU (`-m gpu`).
CPU_AND_GPU = [
    pytest.param("cpu", id="cpu"),
    pytest.param(GPU_TEST_DEVICE, id="gpu", marks=GPU),
]


def tracked_files() -> list[str]:
    """The repository's tracked files (``git ls-files``), as paths relative to its root."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout, so no list of tracked files: {err}")
    return [name for name in listed.decode("utf-8").split("\0") if name]


def tiny_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    """Overrides that make the quickstart run in seconds on the tiny model.

    ``model.dtype=fp32``: the quickstart's ``auto`` would pick bf16 on a CPU with native bf16
    and fp32 elsewhere, and the suite must compute the same on both (tests/model covers auto).
    """
    return [
        f"model.name={model_dir}",
        "model.dtype=fp32",
        f"output_dir={out}",
        "data.synthetic.num_examples=160",
        "data.test_per_category=2",
        "federation.num_clients=4",
        "federation.rounds=2",
        "federation.fraction_fit=0.5",
        "train.local_steps=2",
        "train.batch_size=4",
        "train.micro_batch_size=2",
        "eval.max_new_tokens=4",
        *extra,
    ]


class KillInRound(RunObserver):
    """SIGKILLs its own process once the first client of ``server_round`` has replied: that
    client has saved its state, and the round has no completion marker (nothing runs after
    SIGKILL, as after a power cut)."""

    def __init__(self, server_round: int):
        self.server_round = server_round
        self.current = 0

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        self.current = server_round

    def on_client_end(self, update) -> None:
        if self.current == self.server_round:
            os.kill(os.getpid(), signal.SIGKILL)


def run_until_killed(config: str, args: list[str], server_round: int) -> None:
    """A spawned child's target: ``run_experiment`` that dies by SIGKILL in ``server_round``."""
    from fedit.config import load_config
    from fedit.experiment import run_experiment

    run_experiment(load_config(config, args), KillInRound(server_round))


class KillGroupAtEval(RunObserver):
    """SIGKILLs its whole process group (the run and the Ray processes it started) when the
    evaluation ``label`` starts: the round's clients have saved their state, and the round has
    no completion marker yet."""

    def __init__(self, label: str):
        self.label = label

    def on_eval_start(self, label: str) -> None:
        if label == self.label:
            os.killpg(os.getpgid(0), signal.SIGKILL)


def simulate_until_killed(config: str, args: list[str], label: str) -> None:
    """A spawned child's target: a Flower simulation in a session of its own (so its process
    group holds Ray's processes too), killed with that group at evaluation ``label``."""
    from fedit.config import load_config
    from fedit.flower_simulation import run_flower_simulation

    os.setsid()
    run_flower_simulation(load_config(config, args), KillGroupAtEval(label))


class CrashInRound(RunObserver):
    def __init__(self, server_round: int):
        self.server_round = server_round

    def on_round_start(self, server_round: int, selected: list[int]) -> None:
        if server_round == self.server_round:
            raise KeyboardInterrupt


# A few short instructions of mixed lengths that the tiny model's tokenizer covers.
INSTRUCTION_ROWS = [
    ("What is 12 + 35?", "", "47"),
    ("Sort these numbers.", "5, 3, 9", "3, 5, 9"),
    ("Reverse the words.", "red green blue", "blue green red"),
    ("Convert 3 km to meters.", "", "3000"),
    ("Extract the city from the JSON.", '{"city": "Oslo"}', "Oslo"),
    ("What is 7 + 8?", "", "15"),
    ("Sort these numbers.", "9, 1, 4, 2", "1, 2, 4, 9"),
    ("Reverse the words.", "the quick brown fox", "fox brown quick the"),
]


def tiny_lora(
    model_dir: Path, dtype: str = "fp32", dropout: float = 0.0, train_on_inputs: bool = False
):
    """The tiny model with a seeded LoRA (r=4), its tokenizer and INSTRUCTION_ROWS tokenized."""
    from fedit.config import LoraConfig, ModelConfig
    from fedit.data.templates import tokenize_examples
    from fedit.model import apply_lora, load_model

    model, tokenizer = load_model(ModelConfig(name=str(model_dir), device="cpu", dtype=dtype))
    model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=dropout), seed=0)
    rows = [{"instruction": i, "input": x, "output": o} for i, x, o in INSTRUCTION_ROWS]
    examples, _ = tokenize_examples(rows, tokenizer, "alpaca", 256, train_on_inputs)
    return model, tokenizer, examples


# What a private run's metrics.jsonl may hold per round, and per client (an allow-list: a field
# added later fails here until someone decides it is not private).
ROUND_KEYS = {"round", "train_loss", "num_examples", "lr", "eval", "seconds", "aggregation"}
ROUND_KEYS |= {"privacy"}
PUBLIC_SELECTION_KEYS = {"selected_clients", "dropped_clients", "client_metrics", "communication"}
CLIENT_METRIC_KEYS = {"bytes_down", "bytes_up"}
REPLY_METRIC_KEYS = {"dp_unclipped"}


def record_replies(monkeypatch: pytest.MonkeyPatch, module: Any) -> list:
    """Every reply as the server decoded it: wraps ``module.unpack_update`` (``module`` is the
    one whose name the server calls: ``engines.simulation``, or ``engines.messages``, which
    ``engines.flower`` imports from at each call)."""
    replies = []
    original = module.unpack_update

    def recording(message, instruction):
        reply = original(message, instruction)
        replies.append(reply)
        return reply

    monkeypatch.setattr(module, "unpack_update", recording)
    return replies


def check_nothing_per_client_in_the_clear(run: Path, replies: list, selection_private: bool):
    """A private run's replies (as the server decoded them) and metrics.jsonl hold nothing
    per-client but the update and the allow-listed fields."""
    assert replies
    for reply in replies:
        assert (reply.num_examples, reply.train_loss, reply.num_steps) == (0, 0.0, 0)
        assert set(reply.metrics) - {"bytes_down", "bytes_up"} <= REPLY_METRIC_KEYS
    allowed = ROUND_KEYS | (set() if selection_private else PUBLIC_SELECTION_KEYS)
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["round"] == 0:
            continue
        assert set(record) <= allowed, set(record) - allowed
        assert record["train_loss"] == {} and record["num_examples"] == {}
        for metrics in record.get("client_metrics", {}).values():
            assert set(metrics) <= CLIENT_METRIC_KEYS, metrics
        assert "clipped_fraction" not in record["privacy"]
