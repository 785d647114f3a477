"""Turn a chat (a list of OpenAI messages) into the prompt text a run's template trained on.

``chat``: the tokenizer's own chat template over all messages, with the generation prompt.

``alpaca``: Shepherd's template has no turns, so a conversation is written as a sequence of
Alpaca blocks. System messages (joined by blank lines) replace the Alpaca preamble; each user turn
is an ``### Instruction:`` block followed by ``### Response:``, and each assistant turn is the
response text. A single user message without a system message gives exactly the prompt that
training used (``data.templates.build_prompt``)::

    {preamble or system}

    ### Instruction:
    {user 1}

    ### Response:
    {assistant 1}

    ### Instruction:
    {user 2}

    ### Response:
"""

from __future__ import annotations

from typing import Any

from fedit.config import ConfigError
from fedit.data.templates import build_prompt

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)
TEMPLATES = ("alpaca", "chat")


def alpaca_chat_prompt(messages: list[dict[str, str]]) -> str:
    """The multi-turn Alpaca prompt described in the module docstring."""
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
    raise ConfigError(f"template: unknown value {template!r}; choose {' or '.join(TEMPLATES)}")


def adds_special_tokens(template: str) -> bool:
    """Whether the tokenizer should add BOS: the chat template writes its own special tokens."""
    return template != "chat"
