"""Is the synthetic suite learnable? Base-model vs LoRA-trained exact-match accuracy per category.

Measures the base model on held-out synthetic examples, trains one LoRA adapter on a small training
set (loss on the response only; fp32 unless ``--autocast bf16``), and measures again. With
``--train-categories`` the adapter sees only those categories, which shows how much a client
trained on its own categories transfers to the others. Results are written up in docs/synthetic.md.

Run:
    .venv/bin/python benchmarks/synthetic_learnability.py --model /tmp/smol_st \
        --template chat --steps 60 --threads 1 --base-templates chat alpaca \
        --output runs/synthetic_learnability.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedit.data.synthetic import CATEGORIES, generate_synthetic, score_answer
from fedit.data.templates import IGNORE_INDEX, build_prompt, tokenize_example
from fedit.types import Example


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/tmp/smol_st", help="local model folder")
    parser.add_argument("--template", default="chat", choices=("chat", "alpaca"))
    parser.add_argument(
        "--base-templates", nargs="*", default=None, help="templates to score the base model with"
    )
    parser.add_argument("--steps", type=int, default=80, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    parser.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj", help="or all-linear")
    parser.add_argument("--train-examples", type=int, default=400)
    parser.add_argument("--train-categories", nargs="*", default=None, help="default: all")
    parser.add_argument("--eval-per-category", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--autocast",
        default="none",
        choices=("none", "bf16"),
        help="bf16 autocast; only worth it on CPUs with native bf16 (avx512_bf16/AMX)",
    )
    parser.add_argument("--output", type=Path, default=None, help="write results as JSON here")
    return parser.parse_args()


def split_examples(args: argparse.Namespace) -> tuple[list[Example], list[Example]]:
    """Held-out test examples (every category) and training examples (the chosen categories)."""
    pool = generate_synthetic(
        len(CATEGORIES) * args.eval_per_category + args.train_examples * 2, seed=args.seed
    )
    test: list[Example] = []
    taken: dict[str, int] = defaultdict(int)
    rest: list[Example] = []
    for example in pool:
        if taken[example["category"]] < args.eval_per_category:
            taken[example["category"]] += 1
            test.append(example)
        else:
            rest.append(example)
    wanted = set(args.train_categories or CATEGORIES)
    train = [example for example in rest if example["category"] in wanted][: args.train_examples]
    return test, train


@torch.no_grad()
def evaluate(model: Any, tok: Any, examples: list[Example], template: str, args: Any) -> dict:
    """Greedy-generate for every example and return per-category exact-match accuracy."""
    model.eval()
    tok.padding_side = "left"
    correct: dict[str, list[bool]] = defaultdict(list)
    samples: dict[str, str] = {}
    for start in range(0, len(examples), 16):
        batch = examples[start : start + 16]
        prompts = [build_prompt(example, template, tok) for example in batch]
        encoded = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            generated = model.generate(
                **encoded,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                stop_strings=["\n"],  # only the first line is scored
                tokenizer=tok,
            )
        texts = tok.batch_decode(
            generated[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for example, text in zip(batch, texts, strict=True):
            answer = text.strip().split("\n")[0]
            correct[example["category"]].append(score_answer(answer, example["output"]))
            samples.setdefault(example["category"], answer)
    per_category = {name: sum(hits) / len(hits) for name, hits in sorted(correct.items())}
    overall = sum(sum(h) for h in correct.values()) / sum(len(h) for h in correct.values())
    return {"overall": overall, "per_category": per_category, "samples": samples}


def collate(batch: list[Any], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token ids and labels of one batch into (B, T) tensors."""
    length = max(len(item.input_ids) for item in batch)
    input_ids = torch.full((len(batch), length), pad_id)
    labels = torch.full((len(batch), length), IGNORE_INDEX)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    for row, item in enumerate(batch):
        input_ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
        attention[row, : len(item.input_ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def train(model: Any, tok: Any, examples: list[Example], args: Any) -> list[float]:
    """A plain LoRA training loop over shuffled examples; returns the loss per step."""
    tokenized = [
        tokenize_example(example, tok, args.template, cutoff_len=256) for example in examples
    ]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    rng = random.Random(args.seed)
    order: list[int] = []
    losses = []
    model.train()
    for _ in range(args.steps):
        if len(order) < args.batch_size:
            order += rng.sample(range(len(tokenized)), len(tokenized))
        batch = [tokenized[order.pop()] for _ in range(args.batch_size)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
            loss = model(**collate(batch, tok.pad_token_id)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def print_table(results: dict[str, dict]) -> None:
    columns = list(results)
    print("| category | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name in CATEGORIES:
        cells = [f"{results[c]['per_category'].get(name, 0):.0%}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| **overall** | " + " | ".join(f"{results[c]['overall']:.0%}" for c in columns) + " |")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    test, train_set = split_examples(args)
    results: dict[str, dict] = {}
    for template in args.base_templates or []:
        started = time.perf_counter()
        results[f"base/{template}"] = evaluate(model, tok, test, template, args)
        print(f"base {template}: {results[f'base/{template}']['overall']:.1%} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
    targets = args.targets if args.targets == "all-linear" else args.targets.split(",")
    lora = LoraConfig(r=args.r, lora_alpha=args.alpha, lora_dropout=0.05, target_modules=targets)
    model = get_peft_model(model, lora)
    started = time.perf_counter()
    losses = train(model, tok, train_set, args)
    train_seconds = time.perf_counter() - started
    print(f"trained {args.steps} steps in {train_seconds:.0f}s; loss "
          f"{sum(losses[:5]) / 5:.3f} -> {sum(losses[-5:]) / 5:.3f}", flush=True)  # fmt: skip
    started = time.perf_counter()
    results[f"lora/{args.template}"] = evaluate(model, tok, test, args.template, args)
    eval_seconds = time.perf_counter() - started
    print_table(results)
    for name, result in results.items():
        print(name, json.dumps(result["samples"]))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}
        payload |= {"losses": losses, "train_seconds": train_seconds, "eval_seconds": eval_seconds}
        args.output.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
