"""Shared fixtures: a tiny Llama and tokenizer built in code, saved as a local model folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPOSITORY_DATA = Path(__file__).resolve().parents[1] / "data"
JUDGE_DATA = REPOSITORY_DATA / "judge"  # Vicuna-bench, MT-Bench, judge prompts (its README)

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(path: Path, seed: int = 0) -> Path:
    """Write a 2-layer Llama (hidden 64) with a byte-level BPE tokenizer to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request. ### Instruction: ### Input: ### Response: user assistant system",
        "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?-+*/=()[]{}\"'",
    ]
    corpus += [
        "What is 12 + 35? 47. Sort these numbers: 5, 3, 9 -> 3, 5, 9.",
        "Convert 3 km to meters: 3000.",
        "Reverse the words: red green blue -> blue green red. Extract the city from the JSON.",
        "The quick brown fox jumps over the lazy dog. To be, or not to be: that is the question.",
    ] * 20
    special = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local model folder usable as ``model.name``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def repository_data() -> Path:
    """The third-party data shipped in the repository's ``data/`` (each folder's README: source)."""
    return REPOSITORY_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The judge tests' data (Vicuna-bench, MT-Bench, the judge prompts), shipped in
    ``data/judge/`` with its source and licence, so that a clone runs them anywhere."""
    return JUDGE_DATA


@pytest.fixture
def run_identity():
    """Flower messages built outside a ServerApp (the loopback Grid, fake grids) need a run id."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
    yield
    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = None
