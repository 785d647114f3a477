"""Atomic writes: the target is either the old content or the new, never a partial file."""

import pytest

from fedit.io import atomic_directory, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert target.read_text().strip() == '{\n  "ok": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_directory_all_or_nothing(tmp_path):
    target = tmp_path / "adapter"
    with atomic_directory(target) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert (target / "w.bin").read_bytes() == b"1"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "w.bin").write_bytes(b"2")
        raise RuntimeError("crash while writing")
    assert (target / "w.bin").read_bytes() == b"1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_jsonl_round_trip(tmp_path):
    records = [{"round": 0}, {"round": 1, "eval": {"loss": 0.5}}]
    write_jsonl(tmp_path / "m.jsonl", records)
    assert read_jsonl(tmp_path / "m.jsonl") == records
