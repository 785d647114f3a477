"""Preference data: every format parses into hand-checked splits; bad files fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fedit.cli.main import main
from fedit.config import ColumnsConfig, ConfigError, DataConfig, ModelConfig, PartitionConfig
from fedit.data.partition import partition_examples, split_test
from fedit.data.preference import normalize_preference_records, prompt_messages, tokenize_pairs
from fedit.data.sources import load_examples
from fedit.data.synthetic import CATEGORIES, score_answer
from fedit.data.synthetic_pairs import generate_synthetic_pairs
from fedit.data.templates import IGNORE_INDEX, alpaca_chat_prompt
from fedit.model.loading import load_tokenizer
from helpers import tiny_args

ROWS = [
    {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "category": "math"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "category": "geo"},
]
HH_CHOSEN = (
    "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
    "\n\nHuman: What is 2 + 2?\n\nAssistant: It is 4."
)
HH_REJECTED = (
    "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?"
    "\n\nHuman: What is 2 + 2?\n\nAssistant: I don't know."
)
HH_CONTEXT = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]


def _load(path: Path) -> list[dict[str, str]]:
    return load_examples(DataConfig(source=str(path)), seed=0, preference=True)


def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_prompt_chosen_rejected_in_every_file_type(tmp_path, suffix):
    examples = _load(_write(tmp_path / f"prefs{suffix}", ROWS))
    assert [(e["instruction"], e["output"], e["rejected"], e["category"]) for e in examples] == [
        ("What is 2 + 2?", "4", "5", "math"),
        ("Capital of France?", "Paris", "Lyon", "geo"),
    ]
    assert all(e["messages"] == "" and e["input"] == "" for e in examples)


def test_hh_rlhf_dialogues_split_at_the_last_assistant_turn(tmp_path):
    path = _write(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    [example] = _load(path)
    assert example["output"] == "It is 4."
    assert example["rejected"] == "I don't know."
    assert example["instruction"] == "What is 2 + 2?"
    assert example["category"] == "default"
    assert prompt_messages(example) == HH_CONTEXT


def test_hh_multi_turn_prompt_is_the_serving_prompt(tmp_path, tiny_model_dir):
    [example] = _load(
        _write(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    )
    tokenizer = load_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    [pair], stats = tokenize_pairs([example], tokenizer, "alpaca", cutoff_len=512)
    prompt = alpaca_chat_prompt(HH_CONTEXT)  # what `fedit serve` builds for this chat
    prompt_ids = tokenizer(prompt)["input_ids"]
    for side, answer in ((pair.chosen, "It is 4."), (pair.rejected, "I don't know.")):
        assert side.input_ids[: len(prompt_ids)] == prompt_ids
        assert side.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
        scored = [t for t in side.labels if t != IGNORE_INDEX]
        assert tokenizer.decode(scored, skip_special_tokens=True) == answer
    assert stats == {"total": 1, "truncated": 0, "dropped_no_labels": 0}


def test_ultrafeedback_message_lists(tmp_path):
    def chat(answer: str) -> list[dict[str, str]]:
        return [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": answer},
        ]

    rows = [{"prompt": "Name a colour.", "chosen": chat("Blue."), "rejected": chat("Seven.")}]
    for suffix in (".jsonl", ".parquet"):
        [example] = _load(_write(tmp_path / f"uf{suffix}", rows))
        assert (example["instruction"], example["output"], example["rejected"]) == (
            "Name a colour.",
            "Blue.",
            "Seven.",
        )
        assert example["messages"] == ""  # one user turn: a plain instruction


def test_trl_conversational_prompt_with_history():
    records = [
        {
            "prompt": HH_CONTEXT,
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]
    [example] = normalize_preference_records(records, ColumnsConfig(), "x")
    assert (example["output"], example["rejected"]) == ("4", "5")
    assert prompt_messages(example) == HH_CONTEXT


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"prompt": "p", "chosen": "a"}], "no column 'rejected' in"),
        ([{"prompt": "p", "answer": "a"}], "no column 'chosen' in"),
        ([{"chosen": "just text", "rejected": "other"}], "no prompt column and no 'Human:'"),
        (
            [{"chosen": HH_CHOSEN, "rejected": "\n\nHuman: Bye\n\nAssistant: no"}],
            "differ before their last 'Assistant:' turn",
        ),
    ],
)
def test_bad_preference_records_name_the_problem(rows, expected):
    with pytest.raises(ConfigError, match=expected):
        normalize_preference_records(rows, ColumnsConfig(), "prefs.jsonl")


def test_bad_preference_file_is_one_line_exit_2_nothing_written(tiny_model_dir, tmp_path, capsys):
    bad = _write(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a"}])
    out = tmp_path / "out"
    code = main(
        ["run", *tiny_args(tiny_model_dir, out, "train.objective=dpo", f"data.source={bad}")]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert (
        err.startswith("fedit: error:") and "no column 'rejected'" in err and "prefs.jsonl" in err
    )
    assert len(err.splitlines()) == 1 and not out.exists()


def test_synthetic_pairs_reject_a_wrong_answer_from_the_same_task():
    pairs = generate_synthetic_pairs(90, seed=3)
    assert {p["category"] for p in pairs} == set(CATEGORIES)
    for pair in pairs:
        assert score_answer(pair["output"], pair["output"])
        assert not score_answer(pair["rejected"], pair["output"])
    by_category = {p["category"]: p for p in pairs}
    arithmetic = by_category["arithmetic"]
    assert abs(int(arithmetic["rejected"]) - int(arithmetic["output"])) in (1, 10)
    reverse = by_category["reverse_words"]
    assert reverse["rejected"] == reverse["input"]  # left in the original order
    # The instructions are exactly the instruction suite's.
    from fedit.data.synthetic import generate_synthetic

    plain = generate_synthetic(90, seed=3)
    assert [p["instruction"] for p in pairs] == [p["instruction"] for p in plain]


@pytest.mark.parametrize("method", ["iid", "dirichlet", "shards", "natural"])
def test_pairs_hold_out_and_partition_as_their_instructions(method):
    from fedit.data.synthetic import generate_synthetic

    pairs, plain = generate_synthetic_pairs(180, seed=0), generate_synthetic(180, seed=0)
    train, test = split_test(pairs, 2, seed=0)
    plain_train, plain_test = split_test(plain, 2, seed=0)
    assert len(test) == 2 * len(CATEGORIES) and all("rejected" in e for e in test)
    assert [e["instruction"] for e in test] == [e["instruction"] for e in plain_test]
    partition = PartitionConfig(method=method)
    num_clients = len(CATEGORIES) if method == "natural" else 4
    parts = partition_examples(train, num_clients, partition, seed=0)
    assert parts == partition_examples(plain_train, num_clients, partition, seed=0)
