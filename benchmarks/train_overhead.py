"""Local-training overhead: train_local vs a bare forward/backward/AdamW loop on the same batches.

Both loops run the same peft model on the same micro-batches in the same order, from the same
adapter state. Target: train_local takes 1.05x the bare loop's time or less.

    .venv/bin/python benchmarks/train_overhead.py [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import ROOT, record

from fedit.client.batching import batch_indices, collate
from fedit.client.train import train_local
from fedit.config import load_config
from fedit.data.prepare import prepare_data
from fedit.data.templates import tokenize_examples
from fedit.model.loading import load_model
from fedit.model.lora import apply_lora, get_adapter_state, set_adapter_state

TARGET = 1.05


def bare_loop(model, batches, lr: float) -> float:
    """The minimum a training step must do: forward, backward, AdamW, zero grads."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    model.train()
    start = time.perf_counter()
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    model.eval()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = load_config(args.config, [f"train.local_steps={args.steps}", "lora.dropout=0"])
    cfg.train.micro_batch_size = cfg.train.batch_size  # one forward per step in both loops
    data = prepare_data(cfg)
    model, tokenizer = load_model(cfg.model)
    torch.manual_seed(cfg.seed)
    model = apply_lora(model, cfg.lora)
    examples, _ = tokenize_examples(
        [data.train[i] for i in data.parts[0]], tokenizer, cfg.data.template, cfg.train.cutoff_len
    )
    start_state = get_adapter_state(model)
    # train_local's first epoch uses batch_indices(seed=seed): replay exactly those batches.
    order = batch_indices(
        [len(e.input_ids) for e in examples],
        cfg.train.batch_size,
        seed=0,
        group_by_length=cfg.train.group_by_length,
    )[: args.steps]
    if len(order) < args.steps:
        raise SystemExit(f"client 0 has only {len(order)} batches; lower --steps")
    batches = [collate([examples[i] for i in idx], tokenizer.pad_token_id) for idx in order]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)

    fedit_times, bare_times = [], []
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
        set_adapter_state(model, start_state)
        started = time.perf_counter()
        train_local(model, examples, cfg.train, client_id=0, lr=cfg.train.lr, seed=0)
        fedit_times.append(time.perf_counter() - started)
        set_adapter_state(model, start_state)
        bare_times.append(bare_loop(model, batches, cfg.train.lr))
    fedit_s, bare_s = statistics.median(fedit_times), statistics.median(bare_times)
    ratio = fedit_s / bare_s
    body = "\n".join(
        [
            f"Model `{cfg.model.name}`, LoRA r={cfg.lora.r} on {cfg.lora.target_modules}, "
            f"{args.steps} steps of {cfg.train.batch_size} examples ({tokens:,} tokens), "
            f"autocast `{cfg.train.autocast}`, median of {args.repeats} interleaved repeats.",
            "",
            "| loop | seconds | tokens/s |",
            "|---|---|---|",
            f"| bare forward/backward/AdamW | {bare_s:.2f} | {tokens / bare_s:.0f} |",
            f"| fedit `train_local` | {fedit_s:.2f} | {tokens / fedit_s:.0f} |",
            "",
            f"Overhead ratio: **{ratio:.3f}x** (target ≤ {TARGET}x: "
            f"{'met' if ratio <= TARGET else 'missed'}). "
            f"All times: fedit {[round(t, 2) for t in fedit_times]}, "
            f"bare {[round(t, 2) for t in bare_times]}.",
        ]
    )
    record("overhead", "Local-training overhead", body)


if __name__ == "__main__":
    main()
