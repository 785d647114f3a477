"""Helpers shared by the serving tests (no tests here): tiny runs with random LoRA adapters,
a live server on loopback, and reference answers computed without the server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from fedit.client.evaluate import generate_token_ids
from fedit.serving.app import create_app
from fedit.serving.engine import CompletionEngine
from fedit.serving.models import ServedModels, parse_adapter_specs
from fedit.serving.server import running_server

MAX_TOKENS_LIMIT = 64


def make_run(model_dir: Path, run_dir: Path, template: str, seed: int) -> Path:
    """A run folder as ``fedit run`` leaves it, as far as serving reads it: ``config.yaml``
    (model.name, data.template) and a ``global_adapter`` with random, non-zero LoRA weights."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"model": {"name": str(model_dir)}, "data": {"template": template}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return random_adapter(model_dir, run_dir / "global_adapter", seed)


def random_adapter(model_dir: Path, folder: Path, seed: int) -> Path:
    """A PEFT adapter on the tiny model whose LoRA weights are all random (B too, unlike
    LoRA's init), so that it changes the model's output."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], bias="none")
    model = get_peft_model(base, lora)
    with torch.no_grad():  # LoRA B starts at zero; make the adapter change the output
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn_like(param) * 0.5)
    model.save_pretrained(folder)
    return folder


def make_runs(model_dir: Path, root: Path) -> dict[str, Path]:
    """Two runs on the tiny model: ``global`` (chat template) and ``local`` (alpaca)."""
    return {
        "global": make_run(model_dir, root / "run_global", "chat", seed=1),
        "local": make_run(model_dir, root / "run_local", "alpaca", seed=2),
    }


def load_engine(adapters: dict[str, Path]) -> CompletionEngine:
    """The engine ``fedit serve --adapter GLOBAL --adapter local=LOCAL`` builds."""
    specs = parse_adapter_specs([str(adapters["global"]), f"local={adapters['local']}"])
    return CompletionEngine(ServedModels(specs))


@contextmanager
def live_server(engine: CompletionEngine, api_key: str | None = None) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (free port) in a thread; yields its base URL."""
    app = create_app(engine, api_key=api_key, max_tokens_limit=MAX_TOKENS_LIMIT)
    with running_server(app) as url:
        yield url


class Reference:
    """Greedy answers computed directly with transformers + peft, without fedit's server."""

    def __init__(self, model_dir: Path, adapter: Path | None, template: str) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        self.model = PeftModel.from_pretrained(model, str(adapter)) if adapter else model
        self.model.eval()
        self.template = template

    def prompt(self, messages: list[dict[str, str]]) -> str:
        if self.template == "chat":
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        assert len(messages) == 1 and messages[0]["role"] == "user"
        return (
            "Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request.\n\n### Instruction:\n{messages[0]['content']}\n\n"
            "### Response:\n"
        )

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        special = self.template != "chat"
        return list(self.tokenizer(self.prompt(messages), add_special_tokens=special)["input_ids"])

    def answer(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, int]:
        """(text, completion tokens without EOS) of the greedy answer."""
        ids = generate_token_ids(
            self.model,
            self.tokenizer,
            [self.prompt(messages)],
            max_tokens,
            batch_size=1,
            add_special_tokens=self.template != "chat",
        )[0]
        ids = [i for i in ids if i != self.tokenizer.eos_token_id]
        return self.tokenizer.decode(ids, skip_special_tokens=True), len(ids)
