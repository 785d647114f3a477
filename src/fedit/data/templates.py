"""Prompt templates (Alpaca, the tokenizer's chat template) and tokenization with label masking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.config import ConfigError
from fedit.types import Example

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips

# Shepherd's default template (templates/alpaca.json in the FedIT reference code).
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass
class TokenizedExample:
    """One training example as token ids; ``labels`` is IGNORE_INDEX where no loss is taken."""

    input_ids: list[int]
    labels: list[int]
    category: str
    truncated: bool


def _user_message(example: Example) -> str:
    if example.get("input"):
        return f"{example['instruction']}\n\n{example['input']}"
    return example["instruction"]


def build_prompt(example: Example, template: str, tokenizer: Any) -> str:
    """The text the model sees before its response (what generation starts from)."""
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if example.get("input") else ALPACA_NO_INPUT
        return fmt.format(instruction=example["instruction"], input=example.get("input", ""))
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "data.template: 'chat' needs a tokenizer with a chat template; "
                "this model has none, use data.template=alpaca"
            )
        messages = [{"role": "user", "content": _user_message(example)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"data.template: unknown value {template!r}; choose alpaca or chat")


def _full_text(example: Example, prompt: str, template: str, tokenizer: Any) -> str:
    if template == "chat":
        messages = [
            {"role": "user", "content": _user_message(example)},
            {"role": "assistant", "content": example["output"]},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        # Some templates render the assistant turn differently from the generation prompt;
        # fall back to plain concatenation so the prompt is always an exact prefix.
        if text.startswith(prompt):
            return text
        return prompt + example["output"] + (tokenizer.eos_token or "")
    return prompt + example["output"]


def _encode(text: str, tokenizer: Any, template: str) -> list[int]:
    # The chat template writes its own special tokens; the Alpaca text needs the model's BOS.
    return list(tokenizer(text, add_special_tokens=template != "chat")["input_ids"])


def tokenize_example(
    example: Example,
    tokenizer: Any,
    template: str,
    cutoff_len: int,
    train_on_inputs: bool = False,
) -> TokenizedExample:
    """Tokenize prompt + response, append EOS, truncate to ``cutoff_len`` and mask the prompt."""
    prompt = build_prompt(example, template, tokenizer)
    full = _full_text(example, prompt, template, tokenizer)
    input_ids = _encode(full, tokenizer, template)
    eos = tokenizer.eos_token_id
    if template == "alpaca" and eos is not None and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
    prompt_len = len(_encode(prompt, tokenizer, template))
    truncated = len(input_ids) > cutoff_len
    input_ids = input_ids[:cutoff_len]
    labels = list(input_ids)
    if not train_on_inputs:
        masked = min(prompt_len, len(labels))
        labels[:masked] = [IGNORE_INDEX] * masked
    return TokenizedExample(input_ids, labels, example.get("category", ""), truncated)


def tokenize_examples(
    examples: list[Example],
    tokenizer: Any,
    template: str,
    cutoff_len: int,
    train_on_inputs: bool = False,
) -> tuple[list[TokenizedExample], dict[str, int]]:
    """Tokenize many examples. Returns them with counts of truncated and dropped examples.

    An example whose response was cut away entirely has no label left and is dropped.
    """
    kept: list[TokenizedExample] = []
    stats = {"total": len(examples), "truncated": 0, "dropped_no_labels": 0}
    for example in examples:
        tokenized = tokenize_example(example, tokenizer, template, cutoff_len, train_on_inputs)
        stats["truncated"] += tokenized.truncated
        if all(label == IGNORE_INDEX for label in tokenized.labels):
            stats["dropped_no_labels"] += 1
            continue
        kept.append(tokenized)
    return kept, stats


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)


def alpaca_chat_prompt(messages: list[dict[str, str]]) -> str:
    """A conversation as Alpaca blocks (what ``fedit serve`` sends the model).

    System messages (joined by blank lines) replace the preamble; each user turn is an
    ``### Instruction:`` block followed by ``### Response:``, each assistant turn the response
    text. One user message without a system message gives exactly ``build_prompt``'s prompt.
    """
    system = [m["content"] for m in messages if m["role"] == "system"]
    parts = ["\n\n".join(system) if system else ALPACA_PREAMBLE, "\n\n"]
    for message in messages:
        if message["role"] == "user":
            parts.append(f"### Instruction:\n{message['content']}\n\n### Response:\n")
        elif message["role"] == "assistant":
            parts.append(f"{message['content']}\n\n")
    return "".join(parts)


def chat_prompt(messages: list[dict[str, str]], template: str, tokenizer: Any) -> str:
    """The prompt text for ``messages`` under ``template`` (alpaca or chat).

    Raises:
        ConfigError: Unknown template, or ``chat`` with a tokenizer that has no chat template.
    """
    if template == "alpaca":
        return alpaca_chat_prompt(messages)
    if template == "chat":
        # build_prompt checks that the tokenizer has a chat template and names the fix.
        build_prompt({"instruction": "", "input": "", "output": ""}, template, tokenizer)
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"template: unknown value {template!r}; choose alpaca or chat")
