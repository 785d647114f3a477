"""The quickstart on a GPU: wall time, training tokens per second and peak GPU memory.

``scripts/gpu-check.sh`` runs it once per variant (``model.device=cuda``, then also
``model.quantization=4bit``), each writing a JSON of figures, and then once with ``--summary``,
which turns the JSONs into the markdown section that docs/benchmarks.md takes (``--record``
writes it there):

    .venv/bin/python benchmarks/gpu_quickstart.py --json runs/gpu-check/cuda.json model.device=cuda
    .venv/bin/python benchmarks/gpu_quickstart.py --summary runs/gpu-check/*.json --record
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from common import QUICKSTART, ROOT, write_section

TARGET_SECONDS = 8 * 60  # the whole of scripts/gpu-check.sh
SECTION = "gpu"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")


def versions() -> str:
    """The versions that matter for the GPU path, as one line."""
    parts = []
    for name in PACKAGES:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} missing")
    if torch.version.cuda:
        parts.insert(1, f"CUDA {torch.version.cuda}")
    return ", ".join(parts) + f", Python {platform.python_version()}"


def gpu_name() -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU (figures from the CPU)"
    props = torch.cuda.get_device_properties(0)
    return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"


def _client_metrics(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for record in history[1:] for m in record.get("client_metrics", {}).values()]


def measure(overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """Run ``fedit run configs/quickstart.yaml OVERRIDES`` in this process and read its figures."""
    from fedit.cli.main import main
    from fedit.model.loading import ensure_embedded_model

    started = time.perf_counter()
    ensure_embedded_model("smollm2-135m-instruct")  # converted once; not part of the run's time
    conversion = time.perf_counter() - started
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    args = ["run", str(QUICKSTART), "overwrite=true", f"output_dir={output_dir}", *overrides]
    code = main(args)
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"fedit {' '.join(args)} exited with {code}")
    history = [json.loads(line) for line in (output_dir / "metrics.jsonl").open()]
    clients = _client_metrics(history)
    tokens = sum(int(m["tokens"]) for m in clients)
    train_seconds = sum(float(m["seconds"]) for m in clients)
    return {
        "overrides": overrides,
        "wall_seconds": seconds,
        "conversion_seconds": conversion,
        "fit_seconds": sum(r["seconds"].get("fit", 0.0) for r in history[1:]),
        "eval_seconds": sum(r["seconds"].get("eval", 0.0) for r in history),
        "train_tokens": tokens,
        "tokens_per_second": tokens / train_seconds if train_seconds else 0.0,
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "accuracy": [history[0]["eval"]["accuracy"], history[-1]["eval"]["accuracy"]],
        "loss": [history[0]["eval"]["loss"], history[-1]["eval"]["loss"]],
        "setup": _setup(output_dir),
        "gpu": gpu_name(),
        "versions": versions(),
    }


def _setup(run_dir: Path) -> str:
    """The run's shape in words, from the config it recorded."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    fed, train, lora = cfg["federation"], cfg["train"], cfg["lora"]
    per_round = max(int(fed["fraction_fit"] * fed["num_clients"]), 1)
    return (
        f"{fed['num_clients']} clients, {fed['rounds']} rounds of {per_round} clients × "
        f"{train['local_steps']} steps of {train['batch_size']} examples, LoRA r={lora['r']} on "
        f"{'/'.join(m.removesuffix('_proj') for m in lora['target_modules'])}"
    )


def _mib(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "n/a"


def summary(
    results: list[dict[str, Any]], tests: str, total_seconds: float | None, note: str = ""
) -> str:
    """The markdown section: machine, test result, one table row per quickstart, a note."""
    lines = [f"Machine: {results[0]['gpu']}; {results[0]['versions']}.", ""]
    if tests:
        lines += [f"`make test-gpu`: {tests}", ""]
    if total_seconds is not None:
        verdict = "met" if total_seconds <= TARGET_SECONDS else "missed"
        lines += [
            f"Whole check, installation included: **{total_seconds / 60:.1f} min** "
            f"(target ≤ {TARGET_SECONDS // 60} min: {verdict}).",
            "",
        ]
    lines += [
        f"The quickstart (`configs/quickstart.yaml`, SmolLM2-135M-Instruct: {results[0]['setup']}; "
        "evaluation with generation after every round). Wall time is the whole `fedit run` "
        "with the model cached; tokens/s counts the real (unpadded) tokens of local training "
        "over the clients' training time; peak memory is torch's allocator high-water mark "
        "(the CUDA context, about 0.5 GiB, comes on top).",
        "",
        "| overrides | wall time | training | evaluation | training tokens/s "
        "| peak GPU memory allocated (reserved), MiB | held-out loss | accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (loss_base, loss_final), (acc_base, acc_final) = r["loss"], r["accuracy"]
        lines.append(
            f"| `{' '.join(r['overrides'])}` | {r['wall_seconds']:.0f} s | {r['fit_seconds']:.0f} s"
            f" | {r['eval_seconds']:.0f} s | {r['tokens_per_second']:,.0f} "
            f"| {_mib(r['peak_allocated_mib'])} ({_mib(r['peak_reserved_mib'])}) "
            f"| {loss_base:.3f} → {loss_final:.3f} | {acc_base:.3f} → {acc_final:.3f} |"
        )
    if note:
        lines += ["", note]
    return "\n".join(lines)


def section(body: str) -> str:
    """``body`` as docs/benchmarks.md's GPU section, between its markers."""
    return (
        f"<!-- {SECTION}:start -->\n## GPU check\n\n```bash\nscripts/gpu-check.sh\n```\n\n"
        f"{body.strip()}\n<!-- {SECTION}:end -->"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the quickstart")
    parser.add_argument("--json", type=Path, help="write the figures of this run here")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "runs" / "gpu_quickstart")
    parser.add_argument("--summary", nargs="+", type=Path, help="JSONs to summarise instead")
    parser.add_argument("--tests", default="", help="the `make test-gpu` result line")
    parser.add_argument("--total-seconds", type=float, help="the whole check's wall time")
    parser.add_argument("--note", default="", help="a paragraph to add under the table")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md too")
    args = parser.parse_args()
    if args.summary:
        results = [json.loads(path.read_text()) for path in args.summary]
        block = section(summary(results, args.tests, args.total_seconds, args.note))
        if args.record:
            write_section(SECTION, block)
        print(block)
        return
    result = measure(args.overrides, args.output_dir)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    peak = _mib(result["peak_allocated_mib"])
    print(
        f"quickstart {' '.join(args.overrides)}: wall {result['wall_seconds']:.1f} s, "
        f"training {result['tokens_per_second']:,.0f} tokens/s, peak GPU memory {peak} MiB, "
        f"accuracy {result['accuracy'][0]:.3f} -> {result['accuracy'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
