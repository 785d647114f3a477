"""``fedit serve`` on CUDA (``-m gpu``): the ``openai`` client gets the same greedy answers,
streamed and not, from the base model, the global adapter and a named adapter as direct
generation on the same GPU."""

from __future__ import annotations

import openai
import pytest
import torch
from serving_support import Reference, live_server, load_engine, make_runs

from fedit.client.evaluate import generate_token_ids
from fedit.client.train import model_device
from helpers import GPU, GPU_TEST_DEVICE

pytestmark = GPU

QUESTION = [{"role": "user", "content": "Sort these numbers: 5, 3, 9"}]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    return make_runs(tiny_model_dir, tmp_path_factory.mktemp("serve-runs-cuda"))


@pytest.fixture(scope="module")
def engine(adapters):
    return load_engine(adapters)  # model.device=auto: the GPU


@pytest.fixture(scope="module")
def client(engine):
    with live_server(engine) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def expected(tiny_model_dir, adapters):
    """(text, completion tokens) per model id, generated directly on the same device in fp32,
    as the server does (no autocast)."""
    references = {
        "base": Reference(tiny_model_dir, None, "chat"),  # the base takes the global's template
        "global": Reference(tiny_model_dir, adapters["global"], "chat"),
        "local": Reference(tiny_model_dir, adapters["local"], "alpaca"),
    }
    answers = {}
    for name, reference in references.items():
        model = reference.model.to(GPU_TEST_DEVICE)
        ids = generate_token_ids(
            model,
            reference.tokenizer,
            [reference.prompt(QUESTION)],
            MAX_TOKENS,
            batch_size=1,
            add_special_tokens=reference.template != "chat",
            autocast="none",
        )[0]
        ids = [i for i in ids if i != reference.tokenizer.eos_token_id]
        answers[name] = (reference.tokenizer.decode(ids, skip_special_tokens=True), len(ids))
    return answers


def test_the_served_model_is_on_the_gpu(engine):
    assert model_device(engine.models.model).type == torch.device(GPU_TEST_DEVICE).type


@pytest.mark.parametrize("model", ["base", "global", "local"])
def test_streamed_and_whole_answers_match_direct_generation(client, expected, model):
    text, tokens = expected[model]
    whole = client.chat.completions.create(
        model=model, messages=QUESTION, temperature=0, max_tokens=MAX_TOKENS
    )
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == tokens

    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=QUESTION,
            temperature=0,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = [c.choices[0].delta.content for c in chunks if c.choices]
    assert "".join(part for part in content if part) == text
    assert chunks[-1].usage.completion_tokens == tokens


def test_the_adapters_change_the_answers(expected):
    assert len({text for text, _ in expected.values()}) == 3
