"""Atomic writes: the target is either the old content or the new, never a partial file."""

import os
import shutil
import stat

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


@pytest.fixture
def umask():
    """Set the process umask for a test, restoring it afterwards."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_outputs_honour_the_umask_as_open_does(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "report.md", "shared")
    with atomic_directory(tmp_path / "exported") as tmp:
        (tmp / "model.safetensors").write_bytes(b"1")
        atomic_write_text(tmp / "config.json", "{}")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "exported").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "exported" / "config.json").stat().st_mode) == file_mode
    with open(tmp_path / "plain.txt", "w") as handle:  # what open() does with the same umask
        handle.write("x")
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == file_mode


def test_secrets_stay_private_whatever_the_umask(tmp_path, umask):
    umask(0o002)
    atomic_write_text(tmp_path / "key.pem", "secret", private=True)
    with atomic_directory(tmp_path / "certs", private=True) as tmp:
        (tmp / "ca.crt").write_text("public")
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "certs").stat().st_mode) == 0o700


def test_certificates_folder_with_the_ca_key_stays_private(tmp_path, umask):
    from fedit.engines.flower_launch import write_certificates

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    umask(0o022)
    folder = write_certificates(tmp_path / "certs", ["127.0.0.1"], bits=1024)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) & 0o077 == 0
