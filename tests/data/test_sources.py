"""Tests for fedit.data.sources: local files, folders, hub datasets, column mapping, errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from fedit.config import ColumnsConfig, ConfigError, DataConfig, PartitionConfig
from fedit.data.partition import natural_num_clients, partition_examples
from fedit.data.sources import load_examples, load_test_examples

DOLLY = [
    {"instruction": "Name a fruit.", "context": "", "response": "Apple", "category": "open_qa"},
    {
        "instruction": "Summarise.",
        "context": "A long text.",
        "response": "Short.",
        "category": "summarization",
    },
    {"instruction": "Pick one.", "context": "a or b", "response": "a", "category": "open_qa"},
]
ALPACA = [
    {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
    {"instruction": "Translate.", "input": "bonjour", "output": "hello"},
]
FIELDS = {"instruction", "input", "output", "category"}


def write_json(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def load(source: Path | str, **kwargs) -> list[dict[str, str]]:
    return load_examples(DataConfig(source=str(source), **kwargs), seed=0)


DOLLY_EXPECTED = [
    {"instruction": "Name a fruit.", "input": "", "output": "Apple", "category": "open_qa"},
    {
        "instruction": "Summarise.",
        "input": "A long text.",
        "output": "Short.",
        "category": "summarization",
    },
    {"instruction": "Pick one.", "input": "a or b", "output": "a", "category": "open_qa"},
]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_every_file_type_loads_dolly_records(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"train{suffix}"
    if suffix == ".json":
        write_json(path, DOLLY)
    elif suffix == ".jsonl":
        write_jsonl(path, DOLLY)
    elif suffix == ".csv":
        pd.DataFrame(DOLLY).to_csv(path, index=False)
    else:
        pd.DataFrame(DOLLY).to_parquet(path)
    assert load(path) == DOLLY_EXPECTED


def test_json_file_with_json_lines_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.json", DOLLY)
    assert load(path) == DOLLY_EXPECTED


def test_alpaca_schema_without_category_gets_default(tmp_path: Path) -> None:
    examples = load(write_json(tmp_path / "alpaca.json", ALPACA))
    assert examples == [
        {"instruction": "Add 2 and 3.", "input": "", "output": "5", "category": "default"},
        {"instruction": "Translate.", "input": "bonjour", "output": "hello", "category": "default"},
    ]


def test_values_become_strings_and_missing_become_empty(tmp_path: Path) -> None:
    records = [
        {"instruction": "Count.", "output": 3, "category": None},
        {"instruction": None, "input": None, "output": 1.5, "category": "math"},
    ]
    examples = load(write_json(tmp_path / "mixed.json", records))
    assert examples == [
        {"instruction": "Count.", "input": "", "output": "3", "category": "default"},
        {"instruction": "", "input": "", "output": "1.5", "category": "math"},
    ]
    assert all(set(ex) == FIELDS for ex in examples)


def test_parquet_nulls_become_empty_strings(tmp_path: Path) -> None:
    path = tmp_path / "nulls.parquet"
    frame = pd.DataFrame({"instruction": ["a", "b"], "input": [None, "x"], "output": ["1", None]})
    frame.to_parquet(path)
    examples = load(path)
    assert examples[0]["input"] == "" and examples[1]["output"] == ""
    assert examples[1]["input"] == "x"


def test_explicit_mapping_wins_over_autodetection(tmp_path: Path) -> None:
    records = [
        {"question": "Q1", "answer": "A1", "output": "ignored", "instruction": "ignored", "t": "x"}
    ]
    columns = ColumnsConfig(instruction="question", output="answer", category="t")
    examples = load(write_json(tmp_path / "qa.json", records), columns=columns)
    assert examples == [{"instruction": "Q1", "input": "", "output": "A1", "category": "x"}]


def test_missing_explicit_column_lists_found_columns(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", DOLLY)
    with pytest.raises(ConfigError) as err:
        load(path, columns=ColumnsConfig(output="answer"))
    message = str(err.value)
    assert message.startswith("data.columns.output: column 'answer' not found in ")
    assert str(path) in message
    assert "columns found: instruction, context, response, category" in message


def test_undetectable_required_columns_are_all_reported(tmp_path: Path) -> None:
    path = write_json(tmp_path / "odd.json", [{"prompt": "p", "completion": "c"}])
    with pytest.raises(ConfigError) as err:
        load(path)
    assert [p.split(":")[0] for p in err.value.problems] == [
        "data.columns.instruction",
        "data.columns.output",
    ]
    assert "columns found: prompt, completion" in err.value.problems[1]


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\n{"instruction": "c", oops}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:3: malformed JSON line \("):
        load(path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": }\n]\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3: malformed JSON"):
        load(path)


def test_json_that_is_not_records_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "numbers.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="record 1 is a int"):
        load(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train.json"
    with pytest.raises(ConfigError, match=f"^data.source: file not found: {missing}$"):
        load(missing)
    with pytest.raises(ConfigError, match="^data.source: file not found: data/x.csv$"):
        load("data/x.csv")


def test_empty_file_is_a_config_error(tmp_path: Path) -> None:
    for name, text in [("empty.json", "[]"), ("empty.jsonl", "\n"), ("empty.csv", "")]:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match="holds no examples"):
            load(path)


def test_unsupported_extension_in_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(ConfigError, match="unsupported file type"):
        load(path)


def test_folder_reads_train_file_and_test_file(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", DOLLY)
    write_json(tmp_path / "test.json", ALPACA)
    data = DataConfig(source=str(tmp_path), test_source=str(tmp_path))
    assert load_examples(data, seed=0) == DOLLY_EXPECTED
    test = load_test_examples(data, seed=0)
    assert test is not None and [ex["output"] for ex in test] == ["5", "hello"]


def test_folder_without_train_file_lists_contents(tmp_path: Path) -> None:
    write_json(tmp_path / "dev.json", DOLLY)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError) as err:
        load(tmp_path)
    message = str(err.value)
    assert message.startswith(f"data.source: folder {tmp_path} has no train.json/")
    assert message.endswith("found: dev.json, notes.txt")


def test_test_source_unset_gives_none() -> None:
    assert load_test_examples(DataConfig(), seed=0) is None


def test_max_examples_is_a_deterministic_shuffled_subset(tmp_path: Path) -> None:
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(50)]
    path = write_json(tmp_path / "many.json", records)
    first = load(path, max_examples=10)
    assert len(first) == 10
    assert first == load(path, max_examples=10)
    assert len({ex["instruction"] for ex in first}) == 10
    other = load_examples(DataConfig(source=str(path), max_examples=10), seed=1)
    assert other != first
    # Not simply the first ten records.
    assert [ex["instruction"] for ex in first] != [f"q{i}" for i in range(10)]
    assert len(load(path)) == 50


def test_synthetic_source_dispatches_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_generate(num_examples: int, seed: int, categories: list[str] | None = None):
        calls.append((num_examples, seed, categories))
        return [{"instruction": "1+1", "input": "", "output": "2", "category": "arithmetic"}]

    fake = types.ModuleType("fedit.data.synthetic")
    fake.generate_synthetic = fake_generate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedit.data.synthetic", fake)
    data = DataConfig(source="synthetic")
    data.synthetic.num_examples = 7
    data.synthetic.categories = ["arithmetic"]
    examples = load_examples(data, seed=3)
    assert calls == [(7, 3, ["arithmetic"])]
    assert examples == [
        {"instruction": "1+1", "input": "", "output": "2", "category": "arithmetic"}
    ]


def test_hub_dataset_is_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    seen = {}

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None, **kw):
        seen.update(path=path, name=name, split=split)
        return datasets.Dataset.from_list(DOLLY)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = DataConfig(source="databricks/databricks-dolly-15k", subset="en", split="train[:3]")
    assert load_examples(data, seed=0) == DOLLY_EXPECTED
    assert seen == {"path": "databricks/databricks-dolly-15k", "name": "en", "split": "train[:3]"}


def test_hub_failure_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as err:
        load("x/y")
    assert str(err.value) == (
        "data.source: could not load hub dataset 'x/y' (offline or not found): "
        "ConnectionError: Couldn't reach 'x/y' on the Hub (LocalEntryNotFoundError)"
    )


def test_hub_failure_names_test_source(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ValueError("x" * 500)

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError) as err:
        load_test_examples(DataConfig(test_source="owner/test-set"), seed=0)
    message = str(err.value)
    assert message.startswith("data.test_source: could not load hub dataset 'owner/test-set'")
    assert len(message) < 320 and message.endswith("...")


def test_shakespeare_loads_and_partitions_naturally(repository_data: Path) -> None:
    path = repository_data / "shakespeare" / "train.json"
    examples = load(path)
    assert len(examples) == 800  # the shipped draw from LEAF's 3,757 (data/shakespeare/README.md)
    assert all(set(ex) == FIELDS for ex in examples)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert examples[0]["output"] == raw[0]["response"]
    assert examples[0]["input"] == raw[0]["context"]
    num_clients = natural_num_clients(examples)
    categories = sorted({record["category"] for record in raw})
    assert num_clients == len(categories)
    parts = partition_examples(examples, num_clients, PartitionConfig(method="natural"), seed=0)
    for category, part in zip(categories, parts, strict=True):
        assert {examples[i]["category"] for i in part} == {category}
    assert sorted(i for part in parts for i in part) == list(range(len(examples)))


def test_shakespeare_folder_as_test_source(repository_data: Path) -> None:
    folder = str(repository_data / "shakespeare")
    data = DataConfig(source=folder, test_source=folder)
    test = load_test_examples(data, seed=0)
    assert test is not None and len(test) == 260


@pytest.mark.parametrize(
    ("suffix", "where"), [(".json", ":13: "), (".jsonl", ":3: "), (".csv", ": ")]
)
def test_file_that_is_not_utf8_names_file_and_line(tmp_path: Path, suffix: str, where: str) -> None:
    records = [*ALPACA, {"instruction": "Café?", "input": "", "output": "oui"}]
    path = tmp_path / f"latin1{suffix}"
    if suffix == ".csv":
        pd.DataFrame(records).to_csv(path, index=False, encoding="latin-1")
    else:
        text = (write_json if suffix == ".json" else write_jsonl)(path, records).read_text()
        path.write_bytes(text.replace("\\u00e9", "é").encode("latin-1"))  # as Windows tools do
    with pytest.raises(ConfigError, match=rf"latin1\{suffix}{where}.*(not UTF-8|malformed CSV)"):
        load(path)


def test_utf8_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    for writer, name in [(write_json, "bom.json"), (write_jsonl, "bom.jsonl")]:
        path = writer(tmp_path / name, ALPACA)
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert [e["output"] for e in load(path)] == ["5", "hello"]


def test_empty_responses_are_counted_and_all_empty_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    some = [*ALPACA, {"instruction": "Say nothing.", "input": "", "output": "  "}]
    with caplog.at_level("WARNING", logger="fedit.data.sources"):
        assert len(load(write_jsonl(tmp_path / "some.jsonl", some))) == 3
    assert any("1 of 3 examples" in r.getMessage() for r in caplog.records), caplog.text
    none = [dict(record, output="") for record in ALPACA]
    with pytest.raises(ConfigError, match=r"every response .* is empty .*data.columns.output"):
        load(write_jsonl(tmp_path / "none.jsonl", none))
