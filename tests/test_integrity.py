"""The whole-file checks run before anything loads an adapter or a checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from fedit.config import ConfigError
from fedit.integrity import check_adapter_folder, safetensors_problem


@pytest.fixture
def tensors_file(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.ones(3, 4), "b": torch.zeros(5)}, path, metadata={"format": "pt"})
    return path


def test_a_whole_file_passes(tensors_file):
    assert safetensors_problem(tensors_file) is None


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-1], "truncated"),
        (lambda data: data + b"\0", "truncated or damaged"),
        (lambda data: data[:5], "cut short"),
        (lambda data: b"", "cut short"),
        (lambda data: data[:8] + b"{not json" + data[17:], "not valid safetensors"),
        (lambda data: b"hello world, this is not a tensor file", "cut short"),
    ],
    ids=["one byte short", "one byte long", "no header", "empty", "garbage header", "text"],
)
def test_damaged_files_are_named(tensors_file, damage, reason):
    tensors_file.write_bytes(damage(tensors_file.read_bytes()))
    assert reason in safetensors_problem(tensors_file)


def test_adapter_folder_problems_are_one_line(tmp_path, tensors_file):
    folder = tmp_path / "adapter"
    folder.mkdir()
    with pytest.raises(ConfigError, match="--adapter: .* is not a PEFT adapter"):
        check_adapter_folder(folder)
    (folder / "adapter_config.json").write_text("{broken")
    with pytest.raises(ConfigError, match="adapter_config.json is not readable JSON"):
        check_adapter_folder(folder)
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no adapter weights"):
        check_adapter_folder(folder, "resume")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(tensors_file.read_bytes())
    check_adapter_folder(folder)
    weights.write_bytes(tensors_file.read_bytes()[:-3])
    with pytest.raises(ConfigError, match=r"^resume: .*adapter_model.safetensors is damaged"):
        check_adapter_folder(folder, "resume")
