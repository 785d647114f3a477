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

# The prompt itself lives with the training templates, so that preference data's multi-turn
# prompts (data/preference.py) are built by the very code that serving uses.
from fedit.data.templates import ALPACA_PREAMBLE, alpaca_chat_prompt, chat_prompt

__all__ = [
    "ALPACA_PREAMBLE",
    "TEMPLATES",
    "adds_special_tokens",
    "alpaca_chat_prompt",
    "chat_prompt",
]

TEMPLATES = ("alpaca", "chat")


def adds_special_tokens(template: str) -> bool:
    """Whether the tokenizer should add BOS: the chat template writes its own special tokens."""
    return template != "chat"
