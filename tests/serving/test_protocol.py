"""Serving without a server: request validation, prompts of multi-turn chats, stop handling."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer

from fedit.config import ConfigError
from fedit.data.templates import build_prompt
from fedit.serving.engine import _held_back
from fedit.serving.models import parse_adapter_specs
from fedit.serving.prompts import alpaca_chat_prompt, chat_prompt
from fedit.serving.protocol import APIError, parse_chat_request

USER = [{"role": "user", "content": "What is 2 + 3?"}]


def test_parse_full_request():
    request = parse_chat_request(
        {
            "model": "global",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": t} for t in ("Hi ", "there")],
                },
            ],
            "temperature": 0,
            "top_p": 0.5,
            "max_completion_tokens": 7,
            "stop": "\n",
            "seed": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
            "frequency_penalty": 0.1,  # accepted and ignored
        },
        max_tokens_limit=10,
    )
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    assert (request.temperature, request.top_p, request.max_tokens) == (0.0, 0.5, 7)
    assert (request.stop, request.seed) == (["\n"], 3)
    assert request.stream and request.include_usage


def test_defaults_follow_openai():
    request = parse_chat_request({"model": "m", "messages": USER}, max_tokens_limit=10)
    assert (request.temperature, request.top_p, request.max_tokens) == (1.0, 1.0, None)
    assert request.stop == [] and not request.stream


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ("not a dict", "body"),
        ({"messages": USER}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
            "messages[0].content",
        ),
        ({"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": 11}, "max_tokens"),
        ({"model": "m", "messages": USER, "max_tokens": "5"}, "max_tokens"),
        ({"model": "m", "messages": USER, "top_p": -0.1}, "top_p"),
        ({"model": "m", "messages": USER, "temperature": True}, "temperature"),
        ({"model": "m", "messages": USER, "stop": ["a", ""]}, "stop"),
        ({"model": "m", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "messages": USER, "seed": 1.5}, "seed"),
        ({"model": "m", "messages": USER, "stream": "yes"}, "stream"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "a\ud800"}]},
            "messages[0].content",
        ),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}],
            },
            "messages[0].content[0].text",
        ),
        ({"model": "m", "messages": USER, "stop": ["\ud83d"]}, "stop[0]"),
        ({"model": "\ud800", "messages": USER}, "model"),
    ],
)
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(APIError) as caught:
        parse_chat_request(body, max_tokens_limit=10)
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


def test_alpaca_single_turn_is_the_training_prompt():
    example = {"instruction": "What is 2 + 3?", "input": "", "output": "", "category": ""}
    assert alpaca_chat_prompt(USER) == build_prompt(example, "alpaca", None)


def test_alpaca_multi_turn_layout():
    messages = [
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "1 + 1?"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "2 + 2?"},
    ]
    assert alpaca_chat_prompt(messages) == (
        "You add numbers.\n\n### Instruction:\n1 + 1?\n\n### Response:\n2\n\n"
        "### Instruction:\n2 + 2?\n\n### Response:\n"
    )


def test_chat_template_sees_every_message(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert chat_prompt(messages, "chat", tokenizer) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nU2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="data.template=alpaca"):
        chat_prompt(messages, "chat", tokenizer)


@pytest.mark.parametrize(
    ("text", "stops", "held"),
    [
        ("hello", [], 0),
        ("hello wo", ["world"], 2),
        ("hello w", ["world", " w!"], 2),
        ("hello", ["xyz"], 0),
        ("caf\ufffd", [], 1),
        ("\ufffd\ufffd", ["x"], 2),
        ("Obs\ufffd", ["Observation"], 4),
    ],
)
def test_held_back_tail(text, stops, held):
    assert _held_back(text, stops) == held


def _fake_adapter(folder):
    """A folder that passes the adapter checks (config and whole weights); nothing loads it."""
    folder.mkdir(exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, folder / "adapter_model.safetensors")
    return folder


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "at least one adapter"),
        (["{a}", "{a}"], "given twice; name the others"),
        (["bad name={a}"], "is not name=path"),
        (["=x"], "is not name=path"),
        (["base={a}"], "reserved"),
        (["{missing}"], "is not a PEFT adapter"),
    ],
)
def test_adapter_specs_errors(values, message, tmp_path):
    adapter = _fake_adapter(tmp_path / "adapter")
    values = [v.format(a=adapter, missing=tmp_path / "nope") for v in values]
    with pytest.raises(ConfigError, match=message):
        parse_adapter_specs(values)


def test_adapter_specs_names(tmp_path):
    _fake_adapter(tmp_path)
    specs = parse_adapter_specs([str(tmp_path), f"round_1={tmp_path}"])
    assert [(s.name, s.path) for s in specs] == [("global", tmp_path), ("round_1", tmp_path)]
